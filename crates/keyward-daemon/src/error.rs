//! Errors of starting and running the daemon.

use std::io;
use std::path::PathBuf;

use keyward_config::ConfigError;
use keyward_config::home::HomeError;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The home cannot be used (includes the socket path limit).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another daemon holds this home.
    #[error("a keyward daemon already runs for this home (pid {}, socket {})",
        pid.map_or("unknown".to_owned(), |p| p.to_string()), socket.display())]
    AlreadyRunning {
        /// The running daemon's pid, if known.
        pid: Option<u32>,
        /// Its socket.
        socket: PathBuf,
    },
    /// Something answers on the socket although we hold the PID file: never
    /// remove a live socket.
    #[error("a process is answering on {} although this home's PID file is free; \
             refusing to remove a live socket (stop that process or use another --home)", socket.display())]
    SocketInUse {
        /// The socket.
        socket: PathBuf,
    },
    /// A non-socket file sits where the socket goes.
    #[error("{} exists and is not a socket; move it away to start the daemon", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The team's tokens or roles (`<home>/auth/`) cannot be read.
    #[error("cannot read the team's tokens and roles: {0}")]
    Auth(#[from] keyward_auth::AuthError),
    /// An I/O step failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        /// The step, naming the file involved.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl DaemonError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Whether this is a usage or configuration error (exit status 64).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::Home(HomeError::SocketPath(_) | HomeError::NoHome)
        )
    }
}
