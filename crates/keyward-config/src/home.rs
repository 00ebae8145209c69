//! The keyward home: one directory (0700) holding the config, the admin
//! socket, the PID file, the daemon log, the vault, the CA, the runs and the
//! evidence log (the README's "Files" section lists every file in it).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keyward_api::{SocketPathTooLong, check_socket_path};

/// Where the daemon's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// `KEYWARD_SOCKET`: the admin socket somewhere else than in the home
    /// (a system daemon's, under `/run/keyward/`).
    socket: Option<PathBuf>,
}

/// Why no home could be chosen or prepared.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Neither a flag, `KEYWARD_HOME`, `XDG_STATE_HOME` nor `HOME` was usable.
    #[error("cannot choose a keyward home: set --home or KEYWARD_HOME (HOME is not set)")]
    NoHome,
    /// The current directory is needed to resolve a relative home.
    #[error("cannot resolve the relative home {}: {source}", path.display())]
    Relative {
        /// The relative path given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The socket path inside the home is too long.
    #[error(transparent)]
    SocketPath(#[from] SocketPathTooLong),
    /// Creating or securing the directory failed.
    #[error("cannot prepare the keyward home {}: {source}", path.display())]
    Prepare {
        /// The home directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The home exists but is not a directory.
    #[error("the keyward home {} exists but is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

impl Home {
    /// Chooses the home: `explicit` (the `--home` flag or `KEYWARD_HOME`),
    /// else `$XDG_STATE_HOME/keyward`, else `~/.local/state/keyward`.
    /// A relative path is made absolute against the current directory, so a
    /// detached daemon and its clients agree on it.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self, HomeError> {
        let env_path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let chosen = match explicit.filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => p.to_owned(),
            None => match env_path("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
                Some(state) => state.join("keyward"),
                None => env_path("HOME")
                    .ok_or(HomeError::NoHome)?
                    .join(".local/state/keyward"),
            },
        };
        let root = if chosen.is_absolute() {
            chosen
        } else {
            std::env::current_dir()
                .map_err(|source| HomeError::Relative {
                    path: chosen.clone(),
                    source,
                })?
                .join(chosen)
        };
        let socket = env_path("KEYWARD_SOCKET").filter(|p| p.is_absolute());
        Ok(Self { root, socket })
    }

    /// A home at exactly `root` (which must be absolute).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            socket: None,
        }
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The admin socket: `KEYWARD_SOCKET` when set, else in the home.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.root.join("keyward.sock"))
    }

    /// Whether the socket lives outside the home (`KEYWARD_SOCKET`): a
    /// system daemon, which clients use but never start.
    pub fn socket_elsewhere(&self) -> bool {
        self.socket.is_some()
    }

    /// Where public files for clients that cannot read the home (the CA
    /// trust bundle) are published: beside a socket outside the home.
    pub fn public_dir(&self) -> Option<PathBuf> {
        self.socket
            .as_ref()
            .and_then(|s| s.parent().map(Path::to_owned))
    }

    /// The PID file, locked while the daemon lives.
    pub fn pid_path(&self) -> PathBuf {
        self.root.join("keyward.pid")
    }

    /// The log of a detached daemon.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    /// Serializes concurrent "start the daemon if needed" callers.
    pub fn spawn_lock_path(&self) -> PathBuf {
        self.root.join("spawn.lock")
    }

    /// The local CA's directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// Persisted runs (no secrets).
    pub fn runs_path(&self) -> PathBuf {
        self.root.join("runs.json")
    }

    /// The policy texts live runs were created under, by SHA-256.
    pub fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }

    /// The key run records are sealed with while no vault exists (a vault,
    /// once made, gives the key instead and this file is removed).
    pub fn runs_key_path(&self) -> PathBuf {
        self.root.join("runs.key")
    }

    /// The proxy port picked on first start, bound again later.
    pub fn proxy_port_path(&self) -> PathBuf {
        self.root.join("proxy.port")
    }

    /// The team's tokens and roles (`tokens.toml`, `roles.toml`).
    pub fn auth_dir(&self) -> PathBuf {
        self.root.join("auth")
    }

    /// The evidence log's directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }

    /// The encrypted vault's directory.
    pub fn vault_dir(&self) -> PathBuf {
        self.root.join("vault")
    }

    /// The config file used when `--config` is not given.
    pub fn default_config_path(&self) -> PathBuf {
        self.root.join("keyward.toml")
    }

    /// Checks that the socket path fits the Unix limit, before anything is
    /// created or bound.
    pub fn check_socket_path(&self) -> Result<(), HomeError> {
        check_socket_path(&self.socket_path())?;
        Ok(())
    }

    /// Creates the home (0700) if needed. An existing home readable or
    /// writable by others is tightened to 0700 with a warning: the socket and
    /// later the vault rely on it. A widened home that holds a vault is left
    /// as it is, with an error: the vault refuses to be used (see
    /// `Vault::check_modes`) until its owner restores the mode.
    pub fn ensure_private(&self) -> Result<(), HomeError> {
        let prepare = |source| HomeError::Prepare {
            path: self.root.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(prepare)?;
        let meta = fs::metadata(&self.root).map_err(prepare)?;
        if !meta.is_dir() {
            return Err(HomeError::NotADirectory {
                path: self.root.clone(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && self.vault_dir().exists() {
            // Not tightened quietly: a home holding a vault was widened
            // after keyward made it 0700, and the vault refuses every use
            // (naming the file) until its owner has looked.
            tracing::error!(
                home = %self.root.display(),
                "home directory has mode {mode:o}, open to group or others; the vault refuses \
                 to be used until it is 700 again (`chmod 700 {}`)",
                self.root.display()
            );
        } else if mode & 0o077 != 0 {
            tracing::warn!(
                home = %self.root.display(),
                "home directory had mode {mode:o}; tightening it to 700 so only its owner can reach the socket and files"
            );
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(prepare)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_relative_home_becomes_absolute() {
        let home = Home::resolve(Some(Path::new("some/dir"))).unwrap();
        assert!(home.root().is_absolute());
        assert!(home.root().ends_with("some/dir"));
        assert_eq!(home.socket_path(), home.root().join("keyward.sock"));
    }

    #[test]
    fn ensure_private_creates_0700_and_tightens_loose_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        home.ensure_private().unwrap();
        let mode = fs::metadata(home.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(home.root(), fs::Permissions::from_mode(0o755)).unwrap();
        home.ensure_private().unwrap();
        let mode = fs::metadata(home.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_file_where_the_home_should_be_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("file");
        fs::write(&path, "x").unwrap();
        let err = Home::at(&path).ensure_private().unwrap_err();
        assert!(matches!(
            err,
            HomeError::NotADirectory { .. } | HomeError::Prepare { .. }
        ));
    }
}
