//! The daemon's Unix sockets (the admin socket, the CAVRA socket): bound
//! without ever taking over a live one, removed only while still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::error::DaemonError;

/// (device, inode) of the socket we bound, so we never remove a socket that
/// is not ours.
pub(crate) type SocketId = (u64, u64);

/// Binds a Unix socket at `path` (`what` names it in errors) with `mode`,
/// replacing a stale socket nobody listens on and never a live one.
pub(crate) fn bind_socket(
    path: &Path,
    mode: u32,
    what: &str,
) -> Result<(UnixListener, SocketId), DaemonError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(DaemonError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(DaemonError::SocketInUse {
                    socket: path.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::warn!(
                    socket = %path.display(),
                    "removing a stale socket nobody listens on (left by a daemon that did not stop cleanly)"
                );
                fs::remove_file(path).map_err(DaemonError::io(format!(
                    "cannot remove the stale socket {}",
                    path.display()
                )))?;
            }
            Err(e) => {
                return Err(DaemonError::Io {
                    what: format!("cannot probe the existing socket {}", path.display()),
                    source: e,
                });
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DaemonError::Io {
                what: format!("cannot inspect {}", path.display()),
                source: e,
            });
        }
    }
    let bind_err = || DaemonError::io(format!("cannot bind {what} {}", path.display()));
    let listener = UnixListener::bind(path).map_err(bind_err())?;
    // The umask already made it 0700; a socket needs no execute bit.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(bind_err())?;
    let meta = fs::symlink_metadata(path).map_err(bind_err())?;
    Ok((listener, (meta.dev(), meta.ino())))
}

pub(crate) fn remove_socket_if_ours(path: &Path, ours: SocketId, what: &str) {
    match fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == ours => {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), "cannot remove {what}: {e}");
            }
        }
        Ok(_) => {
            tracing::warn!(socket = %path.display(), "{what} was replaced by another file; leaving it")
        }
        Err(_) => {}
    }
}
