//! Redaction of what goes into the evidence log: the admin API's records
//! and the proxy's egress events alike.

use keyward_runs::Registry;
use keyward_runs::authority::Authority;

/// Redacts `value` for the evidence log: the secret values the daemon
/// knows (the open vault's and those live runs resolved from any
/// backend) wherever they appear, sensitive member names, well-known
/// token formats, and run tokens.
pub(crate) fn redact(authority: &Authority, runs: &Registry, value: &mut serde_json::Value) {
    authority.known_secrets().redact(value);
    keyward_evidence::redact(value, &|s| {
        s.len() == 64
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            // Upper-cased too: the registry hashes the token as issued.
            && runs.id_for_token(&s.to_ascii_lowercase()).is_some()
    });
}
