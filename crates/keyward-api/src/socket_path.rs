//! The Unix socket path limit, checked before any bind or connect so the user
//! gets a clear error instead of a cryptic `InvalidInput`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest usable Unix socket path in bytes (`sun_path` is 108 bytes
/// including the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// A socket path over [`SOCKET_PATH_MAX`].
#[derive(Debug, thiserror::Error)]
#[error(
    "socket path {} is {len} bytes, over the {SOCKET_PATH_MAX}-byte limit of Unix socket paths; \
     use a shorter home (--home or KEYWARD_HOME)",
    path.display()
)]
pub struct SocketPathTooLong {
    /// The offending path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

/// Checks `path` against the Unix socket path limit.
pub fn check_socket_path(path: &Path) -> Result<(), SocketPathTooLong> {
    let len = path.as_os_str().as_bytes().len();
    if len > SOCKET_PATH_MAX {
        return Err(SocketPathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_inclusive_at_107_bytes() {
        let ok = format!("/{}", "a".repeat(SOCKET_PATH_MAX - 1));
        assert!(check_socket_path(Path::new(&ok)).is_ok());
        let long = format!("/{}", "a".repeat(SOCKET_PATH_MAX));
        let err = check_socket_path(Path::new(&long)).unwrap_err();
        assert_eq!(err.len, 108);
        let msg = err.to_string();
        assert!(msg.contains("107-byte limit"), "{msg}");
        assert!(msg.contains(&long), "{msg}");
    }
}
