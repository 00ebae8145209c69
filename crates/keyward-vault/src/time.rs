//! UTC timestamps without a date-time crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC, whole seconds: `2026-11-28T17:06:26Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The compact form used in snapshot names, to the millisecond:
/// `20261128T170626.042Z`.
pub(crate) fn compact(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// Parses the compact form back: to the millisecond, or whole seconds
/// (`20261128T170626Z`, the names of snapshots written before
/// milliseconds were added).
pub(crate) fn parse_compact(s: &str) -> Option<SystemTime> {
    if !s.is_ascii() || !(s.len() == 16 || s.len() == 20) {
        return None;
    }
    let fraction = &s[15..s.len() - 1];
    let iso = format!(
        "{}-{}-{}T{}:{}:{}{fraction}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&iso).ok()
}

/// `t` truncated to the millisecond.
pub(crate) fn to_millis(t: SystemTime) -> SystemTime {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_round_trips() {
        let t = from_unix_secs(1_795_000_000) + Duration::from_millis(42);
        let c = compact(t);
        assert_eq!(c, "20261118T110640.042Z");
        assert_eq!(parse_compact(&c), Some(t));
        // Names written before milliseconds still parse.
        assert_eq!(
            parse_compact("20261118T110640Z"),
            Some(from_unix_secs(1_795_000_000))
        );
        assert_eq!(parse_compact("garbage"), None);
        assert_eq!(parse_compact("20261117T080640.04Z"), None);
        assert_eq!(parse_compact("20261117T080640é42Z"), None);
    }
}
