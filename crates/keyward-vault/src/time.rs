//! UTC timestamps without a date-time crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC, whole seconds: `2026-11-28T17:06:26Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The compact form used in snapshot names: `20261128T170626Z`.
pub(crate) fn compact(t: SystemTime) -> String {
    rfc3339(t).replace(['-', ':'], "")
}

/// Parses the compact form back.
pub(crate) fn parse_compact(s: &str) -> Option<SystemTime> {
    if s.len() != 16 {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&iso).ok()
}

/// Whole seconds since the epoch.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_round_trips() {
        let t = from_unix_secs(1_795_000_000);
        let c = compact(t);
        assert_eq!(c.len(), 16);
        assert!(c.ends_with('Z'));
        assert_eq!(parse_compact(&c), Some(t));
        assert_eq!(parse_compact("garbage"), None);
    }
}
