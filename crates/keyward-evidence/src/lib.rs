//! keyward's evidence log: one JSON record per line in
//! `<home>/audit/evidence-NNNNNN.jsonl`, each hashed (SHA-256 of its RFC
//! 8785 canonical form without `hash` and `sig`), chained to the one
//! before, optionally signed (HMAC-SHA256 or Ed25519), and acknowledged
//! only after fsync. A signed head checkpoint (`head.json`) names the last
//! synced record, so records deleted from the end can be found: by the
//! writer at open, and by [`verify`] against a head kept elsewhere.
#![forbid(unsafe_code)]

mod head;
mod jcs;
mod keys;
mod log;
mod record;
mod redact;
mod verify;

pub use head::{Anchor, HEAD_FILE, HEAD_SCHEMA, Head, HeadSig};
pub use jcs::CanonicalObject;
pub use keys::{
    ED25519_ALG, HMAC_ALG, HMAC_KEY_ENV, KeyError, Signer, Verifier, generate_ed25519,
    generate_hmac,
};
pub use log::{
    DEFAULT_SEGMENT_BYTES, EvidenceError, EvidenceLog, LogOptions, Repair, Slot, TailProblem,
    list_segments, read_log_id, segment_name,
};
pub use record::{Kind, Payload, SCHEMA};
pub use redact::{KnownSecrets, MIN_KNOWN_LEN, REDACTED, redact, redact_known};
pub use verify::{Report, VerifyError, VerifyOptions, verify, verify_dir};

/// Canonical JSON (RFC 8785) of `value`.
pub fn canonical_json(value: &serde_json::Value) -> String {
    jcs::to_string(value)
}

/// Writes a new small file (never replacing one) with `mode` and syncs it
/// and its directory.
fn write_durably(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
