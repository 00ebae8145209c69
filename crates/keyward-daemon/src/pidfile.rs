//! The PID file: held with an exclusive `flock` for the daemon's whole life,
//! which is what makes "one daemon per home" true. The pid written inside is
//! informational; the lock is the truth.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How often, and how far apart, a start tries a lock that a probe may be
/// holding for an instant: 100 ms in all, far longer than any probe.
const PROBE_RETRIES: u32 = 10;
const PROBE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// The held lock. Dropping it without [`PidLock::release`] leaves the file
/// behind (stale but harmless: the lock is gone with the process).
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
}

/// Why the PID file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidError {
    /// Another live process holds the lock.
    #[error("another keyward daemon holds {}", path.display())]
    Held {
        /// The PID file.
        path: PathBuf,
        /// The pid written in it, if readable.
        pid: Option<u32>,
    },
    /// Opening, locking or writing failed.
    #[error("cannot use the PID file {}: {source}", path.display())]
    Io {
        /// The PID file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// What a PID file says about the daemon, seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFileState {
    /// No PID file.
    Absent,
    /// A PID file nobody holds: the daemon that wrote it is gone.
    Stale {
        /// The pid it names, if readable.
        pid: Option<u32>,
    },
    /// Held by a live daemon (or one starting or stopping).
    Held {
        /// The pid it names, if already written.
        pid: Option<u32>,
    },
}

impl PidLock {
    /// Takes the PID file at `path` without blocking. On success the file
    /// holds our pid; the second value is the pid a stale file named, so the
    /// caller can warn about it. Nothing is truncated before the lock is ours.
    pub fn acquire(path: &Path) -> Result<(Self, Option<u32>), PidError> {
        let io_err = |source| PidError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        // A `status` probe holds a shared lock for an instant (`inspect`);
        // a daemon holds its lock for good. So a busy lock is tried again
        // a few times before the file counts as held.
        let mut retries = PROBE_RETRIES;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if retries > 0 => {
                    retries -= 1;
                    std::thread::sleep(PROBE_RETRY_DELAY);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(PidError::Held {
                        path: path.to_owned(),
                        pid: read_pid(&mut file),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        let stale = read_pid(&mut file);
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok((
            Self {
                file,
                path: path.to_owned(),
            },
            stale,
        ))
    }

    /// Removes the file, then drops the lock. Removing first means no other
    /// process can find our file unlocked and mistake it for stale.
    pub fn release(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the PID file: {e}");
        }
        drop(self.file);
    }
}

/// Reports the state of the PID file at `path` without disturbing a daemon:
/// the probe takes a shared lock only for an instant, and only when the file
/// exists.
pub fn inspect(path: &Path) -> io::Result<PidFileState> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFileState::Absent),
        Err(e) => return Err(e),
    };
    let pid = read_pid(&mut file);
    match file.try_lock_shared() {
        Ok(()) => Ok(PidFileState::Stale { pid }),
        Err(TryLockError::WouldBlock) => Ok(PidFileState::Held { pid }),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_and_file_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.pid");
        let (lock, stale) = PidLock::acquire(&path).unwrap();
        assert_eq!(stale, None);
        let me = std::process::id();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), me.to_string());
        assert_eq!(
            inspect(&path).unwrap(),
            PidFileState::Held { pid: Some(me) }
        );

        match PidLock::acquire(&path) {
            Err(PidError::Held { pid, .. }) => assert_eq!(pid, Some(me)),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), me.to_string());

        lock.release();
        assert!(!path.exists());
        assert_eq!(inspect(&path).unwrap(), PidFileState::Absent);
    }

    #[test]
    fn a_status_probe_does_not_make_a_start_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.pid");
        fs::write(&path, "4194999\n").unwrap();
        // A probe's shared lock, held across the start's first try.
        let probe = File::open(&path).unwrap();
        probe.lock_shared().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(PROBE_RETRY_DELAY / 2);
            drop(probe);
        });
        let (_lock, stale) = PidLock::acquire(&path).unwrap();
        assert_eq!(stale, Some(4194999));
        release.join().unwrap();
    }

    #[test]
    fn stale_file_is_reported_then_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.pid");
        fs::write(&path, "4194999\n").unwrap();
        assert_eq!(
            inspect(&path).unwrap(),
            PidFileState::Stale { pid: Some(4194999) }
        );
        let (_lock, stale) = PidLock::acquire(&path).unwrap();
        assert_eq!(stale, Some(4194999));
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn garbage_content_reads_as_no_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.pid");
        fs::write(&path, "not a pid").unwrap();
        assert_eq!(inspect(&path).unwrap(), PidFileState::Stale { pid: None });
    }
}
