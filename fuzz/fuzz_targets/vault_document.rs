//! The vault document: the JSON inside every decrypted snapshot (a
//! snapshot written by another tool, or restored from a backup, is read
//! through it). It parses or is refused with an error, round-trips, and
//! its `Debug` form never depends on the values it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyward_vault::fuzzing::parse_document(data);
});
