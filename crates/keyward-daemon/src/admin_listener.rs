//! The admin listener: accepts connections on the admin socket and checks
//! every peer by its credentials before a byte of it is read. The peer
//! check ([`admit`]) is shared with the CAVRA socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::{IncomingStream, Listener};
use keyward_api::{ErrorBody, ErrorDetail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::admin_conn::{AdminConn, ConnectionBudget, FdInbox};
use crate::state::AppState;
use keyward_runs::{Membership, Registry};

/// The process on the other end of an admin connection (`SO_PEERCRED`),
/// with a pidfd for it where the kernel offers one (`SO_PEERPIDFD`).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    pub pidfd: Option<Arc<std::os::fd::OwnedFd>>,
    /// The daemon's own user, root, or a uid in `admin.admin_uids`: may
    /// manage secrets, the vault, grants, the CA and the daemon, and sees
    /// every run. Others admitted by `[admin]` only use runs.
    pub admin: bool,
    /// A descriptor the peer sent on this connection (`SCM_RIGHTS`).
    pub inbox: FdInbox,
}

impl Peer {
    /// Whether this peer is inside a run (or cannot be told apart from one).
    pub(crate) fn membership(&self, runs: &Registry) -> Membership {
        runs.membership(
            self.pid.and_then(|p| u32::try_from(p).ok()),
            self.pidfd.as_deref(),
        )
    }
}

/// Accepts admin connections, refusing every peer that is not the daemon's
/// user, root, or a user the config's `[admin]` table names.
pub(crate) struct AdminListener {
    inner: UnixListener,
    daemon_uid: u32,
    state: std::sync::Weak<AppState>,
    budget: ConnectionBudget,
    /// When a full pool was last logged (once a second at most).
    full_logged: Option<Instant>,
}

impl AdminListener {
    pub(crate) fn new(inner: UnixListener, daemon_uid: u32, state: &Arc<AppState>) -> Self {
        Self {
            inner,
            daemon_uid,
            state: Arc::downgrade(state),
            budget: ConnectionBudget::new(state.config().config.admin.max_connections),
            full_logged: None,
        }
    }

    fn admit(&self, stream: &UnixStream) -> Result<Peer, String> {
        admit(stream, self.daemon_uid, &self.state)
    }
}

/// Checks the peer of a connection to one of the daemon's sockets: its
/// user, root and the users `[admin]` names are admitted (the last only
/// while the daemon's state exists).
pub(crate) fn admit(
    stream: &UnixStream,
    daemon_uid: u32,
    state: &std::sync::Weak<AppState>,
) -> Result<Peer, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let mut peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
        pidfd: keyward_sys::peer_pidfd(stream).map(Arc::new),
        admin: true,
        inbox: FdInbox::default(),
    };
    if peer.uid == daemon_uid || peer.uid == 0 {
        return Ok(peer);
    }
    let refused = || {
        format!(
            "uid {} (pid {}) is not the daemon's uid {}, root, or a user in [admin]",
            peer.uid,
            peer.pid.map_or("?".to_owned(), |p| p.to_string()),
            daemon_uid
        )
    };
    let Some(state) = state.upgrade() else {
        return Err(refused());
    };
    let admin = &state.config().config.admin;
    peer.admin = admin.admin_uids.contains(&peer.uid);
    let in_group = || {
        let gids = admin.allowed_gids().unwrap_or_default();
        !gids.is_empty()
            && (gids.contains(&cred.gid())
                || peer
                    .pid
                    .is_some_and(|pid| peer_groups(pid).iter().any(|g| gids.contains(g))))
    };
    if peer.admin || admin.allow_uids.contains(&peer.uid) || in_group() {
        Ok(peer)
    } else {
        Err(refused())
    }
}

/// The supplementary groups of a process (`/proc/<pid>/status`); none when
/// it cannot be read.
fn peer_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

impl Listener for AdminListener {
    type Io = AdminConn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let stream = match self.inner.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!("admin socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(&stream) {
                Ok(peer) => {
                    let confined = self.state.upgrade().is_none_or(|state| {
                        match peer.membership(&state.runs) {
                            Membership::Outside => false,
                            // The run's own `keyward run` (the run's pid) is
                            // its owner's tool, not the program: it draws
                            // from the owner's pool, so programs filling the
                            // runs' share cannot stop a wrapper from
                            // following or ending its run.
                            Membership::Inside(run) => {
                                state.runs.get(&run).and_then(|r| r.pid).map(i64::from)
                                    != peer.pid.map(i64::from)
                            }
                            Membership::Unknown(_) => true,
                        }
                    });
                    if let Some(slot) = self.budget.take(confined) {
                        return (AdminConn::new(stream, slot, peer.inbox.clone()), peer);
                    }
                    if self
                        .full_logged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        self.full_logged = Some(Instant::now());
                        tracing::warn!(
                            confined,
                            "admin connections are at their cap (admin.max_connections{}); \
                             refusing new ones until some close",
                            if confined {
                                ", the share of processes inside runs"
                            } else {
                                ""
                            }
                        );
                    }
                }
                Err(why) => {
                    tracing::warn!("refused admin connection: {why}");
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            uid: self.daemon_uid,
            pid: None,
            pidfd: None,
            admin: true,
            inbox: FdInbox::default(),
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, AdminListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Answers a refused peer with a canned 403 so its client shows a clear
/// error rather than a reset. The request head is read (bounded in size and
/// time) and discarded unparsed: closing with it unread would make the
/// kernel reset the connection and lose the answer.
async fn refuse(mut stream: UnixStream) {
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code: "peer_refused".to_owned(),
            message: "this keyward daemon accepts admin connections only from its own user, \
                      root and the users its config names in [admin]"
                .to_owned(),
        },
    })
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
