//! CAVRA compatibility: a second Unix socket that speaks CAVRA's daemon
//! protocol, so CAVRA clients (its Go client, hooks that pipe JSON into
//! `nc -U`) can ask keyward for decisions unchanged.
//!
//! The protocol: one JSON EvaluateRequest per connection, one JSON
//! DecisionResponse back (one line), then the daemon closes. Each request
//! is decided by `POST /v1/evaluate` itself: the same policy (a caller
//! inside a run gets its run's), the same evidence record, the same peer
//! check as the admin socket. What goes wrong is answered as
//! `{"error":{"code","message"}}` on one line, and nothing else is lost.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use hyper::body::Bytes;
use keyward_evidence::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::admin_conn::ConnectionBudget;
use crate::admin_listener::{self, Peer};
use crate::error::DaemonError;
use crate::routes;
use crate::socket::{SocketId, bind_socket, remove_socket_if_ours};
use crate::state::AppState;
use keyward_config::{ConfigError, LoadedConfig};
use keyward_runs::Membership;

/// The largest request read; a longer one is answered `payload_too_large`.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused peer's request is waited for before it is answered.
const REFUSED_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, what the client still sends is read and dropped for
/// this long (at most [`DRAIN_BYTES`]): closing a Unix socket with unread
/// input makes the client's next read fail with a reset instead of an end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 1 << 20;
/// How many times a newline may make the reader check whether a request
/// that has not closed its braces is already malformed (each check reads
/// the whole buffer).
const EARLY_CHECKS: u32 = 8;

/// The bound CAVRA socket, before the daemon's state exists.
pub(crate) struct Bound {
    listener: UnixListener,
    path: PathBuf,
    id: SocketId,
}

/// Binds `[compat.cavra] socket`, if configured, with the admin socket's
/// mode. A stale socket nobody listens on is replaced; a live one is never
/// removed.
pub(crate) fn bind(
    config: &LoadedConfig,
    admin_socket: &Path,
    mode: u32,
) -> Result<Option<Bound>, DaemonError> {
    let Some(cavra) = &config.config.compat.cavra else {
        return Ok(None);
    };
    if cavra.socket == admin_socket {
        return Err(DaemonError::Config(ConfigError::Invalid {
            path: config.source.path.clone(),
            key: Some("compat.cavra.socket".to_owned()),
            message: format!(
                "{} is the admin socket; give the CAVRA socket a path of its own",
                cavra.socket.display()
            ),
        }));
    }
    let (listener, id) = bind_socket(&cavra.socket, mode, "the CAVRA socket")?;
    Ok(Some(Bound {
        listener,
        path: cavra.socket.clone(),
        id,
    }))
}

/// The serving CAVRA socket; [`Serving::stop`] closes and removes it.
pub(crate) struct Serving {
    path: PathBuf,
    id: SocketId,
    task: JoinHandle<()>,
}

impl Serving {
    /// Stops accepting and removes the socket (if it is still ours).
    /// Connections already accepted finish within their own time limits.
    pub(crate) fn stop(self) {
        self.task.abort();
        remove_socket_if_ours(&self.path, self.id, "the CAVRA socket");
    }
}

/// Serves CAVRA requests on `bound` until stopped.
pub(crate) fn serve(bound: Bound, state: &Arc<AppState>) -> Serving {
    let budget = ConnectionBudget::new(state.config().config.admin.max_connections);
    let path = bound.path.clone();
    tracing::info!(socket = %path.display(), "CAVRA compatibility socket ready");
    let task = tokio::spawn(accept_loop(
        bound.listener,
        Arc::downgrade(state),
        state.daemon_uid,
        budget,
    ));
    Serving {
        path,
        id: bound.id,
        task,
    }
}

async fn accept_loop(
    listener: UnixListener,
    state: Weak<AppState>,
    daemon_uid: u32,
    budget: ConnectionBudget,
) {
    let mut full_logged: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!("CAVRA socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match admin_listener::admit(&stream, daemon_uid, &state) {
            Ok(peer) => peer,
            Err(why) => {
                tracing::warn!("refused CAVRA connection: {why}");
                tokio::spawn(refuse(stream));
                continue;
            }
        };
        let Some(state) = state.upgrade() else { return };
        let confined = peer.membership(&state.runs) != Membership::Outside;
        let Some(slot) = budget.take(confined) else {
            if full_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                full_logged = Some(Instant::now());
                tracing::warn!(
                    confined,
                    "CAVRA connections are at their cap (admin.max_connections); refusing new \
                     ones until some close"
                );
            }
            continue;
        };
        tokio::spawn(async move {
            answer(stream, peer, state).await;
            drop(slot);
        });
    }
}

/// An error answer: `{"error":{"code","message"}}`.
fn error_answer(code: &str, message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message.into()}})
}

/// Decides one connection's request and answers it.
async fn answer(mut stream: UnixStream, peer: Peer, state: Arc<AppState>) {
    state.activity.touch();
    let (answer, outcome) = match read_request(&mut stream, READ_TIMEOUT).await {
        Err((code, message)) => (error_answer(code, message), code),
        Ok(request) => {
            let decided = routes::policy::evaluate(
                State(state.clone()),
                ConnectInfo(peer.clone()),
                Ok(Bytes::from(request)),
            )
            .await;
            match decided {
                Ok(Json(response)) => {
                    let mut value = serde_json::to_value(&response).unwrap_or_default();
                    // CAVRA's DecisionResponse names the pack that decided.
                    value["policy_pack"] = serde_json::Value::String(response.policy_id);
                    (value, "decision")
                }
                Err(e) => (error_answer(e.code(), e.message()), e.code()),
            }
        }
    };
    if outcome != "decision" {
        tracing::info!(
            uid = peer.uid,
            pid = ?peer.pid,
            "CAVRA request not decided ({outcome})"
        );
    }
    reply(&mut stream, &answer).await;
    state.activity.touch();
    // Another user's requests are attributed to its uid, as on the admin
    // socket.
    if peer.uid != state.daemon_uid {
        state
            .audit(
                Kind::Admin,
                None,
                serde_json::json!({"event": "cavra_request", "outcome": outcome,
                    "uid": peer.uid, "pid": peer.pid}),
            )
            .await;
    }
}

/// Answers a peer the admin check refused, once it has sent its request
/// (or a second has passed).
async fn refuse(mut stream: UnixStream) {
    let _ = read_request(&mut stream, REFUSED_READ_TIMEOUT).await;
    let answer = error_answer(
        "peer_refused",
        "this keyward daemon accepts connections only from its own user, root and the users \
         its config names in [admin]",
    );
    reply(&mut stream, &answer).await;
}

/// Writes `answer` as one line, ends the write side, then reads and drops
/// what the client still sends (bounded), so it sees the answer and an
/// orderly end rather than a reset.
async fn reply(stream: &mut UnixStream, answer: &serde_json::Value) {
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut buf = [0u8; 8192];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Reads one JSON object, as CAVRA's daemon does: it ends where its
/// braces close (a trailing newline is not needed, and what follows is not
/// read as part of it). Errors are `(code, message)`.
async fn read_request(
    stream: &mut UnixStream,
    deadline: Duration,
) -> Result<Vec<u8>, (&'static str, String)> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut framer = Framer::default();
        let mut early_checks = 0;
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ("bad_request", format!("cannot read the request: {e}")))?;
            if n == 0 {
                return Err(if framer.started {
                    (
                        "bad_request",
                        "the connection ended before the JSON request was complete (its braces \
                         do not close)"
                            .to_owned(),
                    )
                } else {
                    (
                        "bad_request",
                        "no request: send one JSON EvaluateRequest such as \
                         {\"action_type\":\"read_file\",\"target\":\"config/prod.secret\"}"
                            .to_owned(),
                    )
                });
            }
            let start = buf.len();
            buf.extend_from_slice(&chunk[..n]);
            match framer.feed(&buf, start) {
                Frame::Complete(end) => {
                    buf.truncate(end);
                    return Ok(buf);
                }
                Frame::NotAnObject(byte) => {
                    return Err((
                        "bad_request",
                        format!(
                            "malformed request: expected a JSON object starting with '{{', got {:?}",
                            char::from(byte)
                        ),
                    ));
                }
                Frame::Incomplete => {}
            }
            if buf.len() > MAX_REQUEST_BYTES {
                return Err((
                    "payload_too_large",
                    format!(
                        "the request is over {MAX_REQUEST_BYTES} bytes; send one JSON \
                         EvaluateRequest per connection"
                    ),
                ));
            }
            // A newline in a request whose braces are still open may mean
            // it is malformed and its sender is waiting: check (a few times
            // at most, since each check reads the whole buffer).
            if chunk[..n].contains(&b'\n') && early_checks < EARLY_CHECKS {
                early_checks += 1;
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&buf)
                    && !e.is_eof()
                {
                    return Err(("bad_request", format!("malformed JSON in the request: {e}")));
                }
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err((
            "request_timeout",
            format!(
                "no complete JSON request within {}s; send one JSON EvaluateRequest per \
                 connection",
                deadline.as_secs()
            ),
        )),
    }
}

/// Finds where the first JSON object of a stream ends, byte by byte, so
/// the reader never parses more than once per byte.
#[derive(Debug, Default)]
struct Framer {
    started: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

#[derive(Debug, PartialEq)]
enum Frame {
    /// The object ends before this offset.
    Complete(usize),
    /// The first byte that is not white space does not open an object.
    NotAnObject(u8),
    Incomplete,
}

impl Framer {
    /// Reads `buf[from..]` (the bytes before were fed already).
    fn feed(&mut self, buf: &[u8], from: usize) -> Frame {
        for (i, &b) in buf.iter().enumerate().skip(from) {
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        continue;
                    }
                    other => return Frame::NotAnObject(other),
                }
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Frame::Complete(i + 1);
                    }
                }
                _ => {}
            }
        }
        Frame::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&str]) -> Frame {
        let mut framer = Framer::default();
        let mut buf = Vec::new();
        for chunk in chunks {
            let start = buf.len();
            buf.extend_from_slice(chunk.as_bytes());
            match framer.feed(&buf, start) {
                Frame::Incomplete => {}
                done => return done,
            }
        }
        Frame::Incomplete
    }

    #[test]
    fn the_first_object_ends_where_its_braces_close() {
        let req = r#"{"action_type":"read_file","target":"a}b\"{c"}"#;
        assert_eq!(frame(&[req, "\n"]), Frame::Complete(req.len()));
        assert_eq!(
            frame(&[&format!("{req}{{\"x\":1}}")]),
            Frame::Complete(req.len())
        );
        // Split anywhere, even inside an escape.
        for cut in 1..req.len() {
            assert_eq!(
                frame(&[&req[..cut], &req[cut..]]),
                Frame::Complete(req.len()),
                "{cut}"
            );
        }
        let nested = " \n {\"a\":[1,{\"b\":2}]}";
        assert_eq!(frame(&[nested, "{"]), Frame::Complete(nested.len()));
        assert_eq!(frame(&["{\"a\":"]), Frame::Incomplete);
        assert_eq!(frame(&["  [1]"]), Frame::NotAnObject(b'['));
        assert_eq!(frame(&["hello"]), Frame::NotAnObject(b'h'));
    }
}
