//! Evidence segments as `keyward audit verify` reads them: the input is
//! split at NUL bytes into up to three segment files and the directory is
//! verified. Whatever the bytes, verification reports instead of failing,
//! and a log it calls valid is one whole chain: one record per line,
//! numbered without a gap.
#![no_main]

use std::sync::LazyLock;

use keyward_evidence::{VerifyOptions, segment_name, verify};
use libfuzzer_sys::fuzz_target;

/// One directory for all runs (in memory where there is a tmpfs).
static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory")
});

fuzz_target!(|data: &[u8]| {
    let dir = DIR.path();
    for entry in std::fs::read_dir(dir).expect("the directory reads") {
        std::fs::remove_file(entry.expect("an entry").path()).expect("a segment is removed");
    }
    let segments: Vec<&[u8]> = data.splitn(3, |&b| b == 0).collect();
    for (i, bytes) in segments.iter().enumerate() {
        std::fs::write(dir.join(segment_name(i as u32 + 1)), bytes).expect("a segment is written");
    }
    let report = verify(dir, &VerifyOptions::default()).expect("verification reports");
    assert!(report.error_count >= report.errors.len() as u64);
    assert_eq!(report.valid, report.error_count == 0);
    if report.valid {
        let lines: u64 = segments
            .iter()
            .map(|s| s.iter().filter(|&&b| b == b'\n').count() as u64)
            .sum();
        assert_eq!(report.records, lines, "a valid log has one record per line");
        if let (Some(first), Some(last)) = (report.first_seq, report.last_seq) {
            assert_eq!(last - first + 1, report.records, "a valid log has no gap");
        }
    }
});
