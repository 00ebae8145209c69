//! Snapshot files: `YYYYMMDDTHHMMSS.mmmZ_<slug>.age` (UTC, to the
//! millisecond; older vaults have whole-second `YYYYMMDDTHHMMSSZ_` names,
//! read alike), one per change, never rewritten. Snapshots are ordered by
//! the time in their names, and that time is the real time of the write:
//! only when two writes fall in the same millisecond (or the clock went
//! back) does the later one take the newest's time plus a millisecond, so
//! the newest is always the current snapshot and names never run ahead of
//! the clock by more than that.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use keyward_api::SnapshotInfo;

use crate::error::VaultError;
use crate::time;

/// Parses a snapshot file name into (compact time, slug).
pub(crate) fn parse_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".age")?;
    let (ts, slug) = stem.split_once('_')?;
    let slug_ok = !slug.is_empty()
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (time::parse_compact(ts).is_some() && slug_ok).then_some((ts, slug))
}

/// All snapshots in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<SnapshotInfo>, VaultError> {
    let entries =
        fs::read_dir(dir).map_err(VaultError::io(format!("cannot list {}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(VaultError::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((ts, slug)) = parse_name(&name) else {
            continue;
        };
        let time = time::parse_compact(ts)
            .map(time::rfc3339)
            .unwrap_or_default();
        let slug = slug.to_owned();
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(SnapshotInfo {
            name,
            time,
            slug,
            size,
        });
    }
    // By the time in the name, not the name: a whole-second name and a
    // millisecond one of the same second compare wrongly as text.
    out.sort_by_cached_key(|s| {
        let time = parse_name(&s.name).and_then(|(ts, _)| time::parse_compact(ts));
        (time, s.name.clone())
    });
    Ok(out)
}

/// Lowercase letters, digits and single dashes, at most 48 characters.
pub(crate) fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 48 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "change".to_owned()
    } else {
        slug
    }
}

/// The name for a new snapshot after `newest`.
pub(crate) fn next_name(newest: Option<&str>, slug: &str, now: SystemTime) -> String {
    let floor = newest
        .and_then(parse_name)
        .and_then(|(ts, _)| time::parse_compact(ts))
        .map(|t| t + Duration::from_millis(1));
    let now = time::to_millis(now);
    let at = match floor {
        Some(floor) if floor > now => floor,
        _ => now,
    };
    format!("{}_{}.age", time::compact(at), slugify(slug))
}

/// Creates `dir/name` with O_EXCL and mode 0600, writes `bytes`, and
/// fsyncs the file and the directory.
pub(crate) fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, VaultError> {
    let path = dir.join(name);
    let what = || format!("cannot write snapshot {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(VaultError::io(what()))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A partial snapshot must never become "current": remove it.
        let _ = fs::remove_file(&path);
        return Err(VaultError::io(what())(e));
    }
    sync_dir(dir)?;
    Ok(path)
}

/// fsync a directory so a new or removed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(VaultError::io(format!("cannot sync {}", dir.display())))
}

/// Removes the oldest snapshots beyond `keep` (at least one is kept).
pub(crate) fn prune(dir: &Path, keep: usize) -> Result<(), VaultError> {
    let all = list(dir)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for old in &all[..excess] {
        let path = dir.join(&old.name);
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(snapshot = %path.display(), "cannot prune an old snapshot: {e}");
        }
    }
    if excess > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_tame() {
        assert_eq!(slugify("set github-token"), "set-github-token");
        assert_eq!(slugify("Set  A.B_c"), "set-a-b-c");
        assert_eq!(slugify("***"), "change");
        assert!(slugify(&"x".repeat(100)).len() <= 48);
    }

    #[test]
    fn names_parse_and_sort_in_write_order_even_within_a_second() {
        let now = time::from_unix_secs(1_795_000_000);
        let first = next_name(None, "init", now);
        assert!(parse_name(&first).is_some(), "{first}");
        let second = next_name(Some(&first), "set-a", now);
        let third = next_name(Some(&second), "rm-a", now);
        assert!(first < second && second < third, "{first} {second} {third}");
        assert!(parse_name("identity.age").is_none());
        assert!(parse_name("20261128T170626Z_UPPER.age").is_none());
    }

    #[test]
    fn names_keep_the_real_time_through_a_burst_of_writes() {
        // A thousand writes in one instant move the time in the name by a
        // second at most (one millisecond each), never a second apiece.
        let now = time::from_unix_secs(1_795_000_000);
        let mut newest = next_name(None, "init", now);
        for i in 0..999 {
            newest = next_name(Some(&newest), &format!("set-{i}"), now);
        }
        let (ts, _) = parse_name(&newest).unwrap();
        assert_eq!(ts, "20261118T110640.999Z");
        // Later writes take the clock's time again.
        let later = now + Duration::from_secs(5) + Duration::from_micros(1500);
        let next = next_name(Some(&newest), "set-x", later);
        assert_eq!(parse_name(&next).unwrap().0, "20261118T110645.001Z");
    }

    #[test]
    fn whole_second_names_of_older_vaults_sort_with_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "20261117T080640.500Z_set-b.age",
            "20261117T080640Z_init.age",
            "20261117T080641Z_set-c.age",
            "20261117T080641.001Z_set-d.age",
        ] {
            write_new(dir.path(), name, b"x").unwrap();
        }
        let order: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.slug)
            .collect();
        assert_eq!(order, ["init", "set-b", "set-c", "set-d"]);
    }

    #[test]
    fn write_is_exclusive_private_and_prune_keeps_newest() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut newest: Option<String> = None;
        let now = SystemTime::now();
        for i in 0..5 {
            let name = next_name(newest.as_deref(), &format!("set-{i}"), now);
            write_new(dir.path(), &name, b"x").unwrap();
            newest = Some(name);
        }
        let name = newest.clone().unwrap();
        assert!(write_new(dir.path(), &name, b"y").is_err(), "O_EXCL");
        let mode = fs::metadata(dir.path().join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        prune(dir.path(), 3).unwrap();
        let left = list(dir.path()).unwrap();
        assert_eq!(left.len(), 3);
        assert_eq!(left.last().unwrap().name, name);
    }
}
