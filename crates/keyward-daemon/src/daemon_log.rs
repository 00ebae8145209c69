//! `daemon.log` rotation. A detached daemon's stdout and stderr are
//! `<home>/daemon.log` (see the CLI's `control::start_detached`); left alone, one line
//! per proxied request would grow it without bound. When it passes
//! `daemon.log_max_bytes` it becomes `daemon.log.1` (replacing the one
//! before) and the daemon's output moves to a fresh `daemon.log`. A daemon
//! whose output goes elsewhere (a terminal, journald) rotates nothing.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// `log` with `suffix` added to its name: `daemon.log.1`, `daemon.log.new`.
fn beside(log: &Path, suffix: &str) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Checks `daemon.log` now and then; a failure is logged once, not on
/// every check, until a rotation works again.
pub(crate) struct Rotation {
    log: PathBuf,
    failing: bool,
}

impl Rotation {
    pub(crate) fn new(log: PathBuf) -> Self {
        Self {
            log,
            failing: false,
        }
    }

    pub(crate) fn check(&mut self, max_bytes: u64) {
        match rotate_if_large(&self.log, max_bytes) {
            Ok(rotated) => {
                if rotated {
                    tracing::info!(
                        "daemon.log reached {max_bytes} bytes (daemon.log_max_bytes); the lines before this one are in {}",
                        beside(&self.log, ".1").display()
                    );
                }
                self.failing = false;
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::error!("cannot rotate {}: {e}", self.log.display());
            }
            Err(_) => {}
        }
    }
}

/// Rotates `log` if this process's stderr is that file and it has reached
/// `max_bytes` (0: never). Returns whether it did.
fn rotate_if_large(log: &Path, max_bytes: u64) -> io::Result<bool> {
    if max_bytes == 0 {
        return Ok(false);
    }
    let (Ok(ours), Ok(file)) = (std::fs::metadata("/proc/self/fd/2"), std::fs::metadata(log))
    else {
        return Ok(false);
    };
    if (ours.dev(), ours.ino()) != (file.dev(), file.ino()) || ours.len() < max_bytes {
        return Ok(false);
    }
    // The new file first, under another name: if that fails (a full
    // disk), nothing has changed.
    let next = beside(log, ".new");
    let fresh = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&next)?;
    std::fs::rename(log, beside(log, ".1"))?;
    std::fs::rename(&next, log)?;
    // Lines written until now are at the end of daemon.log.1, in order.
    keyward_sys::redirect_output(&fresh)?;
    Ok(true)
}
