//! The fd broker from the program's side (`keyward run --broker fd`), and
//! the hand-over of the daemon's end by `keyward run`.
//!
//! A program started with a broker has `KEYWARD_BROKER_FD` (3) and no
//! proxy, token or CA in its environment. [`dial`] asks the broker for a
//! stream; on it the program speaks plain HTTP/1.1 as to a reverse proxy,
//! with `Host` naming the grant's host. A tokio program wraps the stream
//! with `tokio::net::UnixStream::from_std` (after `set_nonblocking`) and
//! hands it to hyper's client `handshake`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{BrokerAttach, BrokerAttached, ErrorBody};

/// The variable naming the broker's descriptor in the program.
pub const BROKER_FD_VAR: &str = "KEYWARD_BROKER_FD";

/// One stream from the broker on `broker` (blocking). A gone broker is
/// `ConnectionAborted`; a refused dial (`0xFF`) is `Other`.
pub fn dial(broker: BorrowedFd<'_>) -> io::Result<UnixStream> {
    keyward_sys::broker_dial(broker).map(UnixStream::from)
}

/// [`dial`] on the descriptor `KEYWARD_BROKER_FD` names. The descriptor
/// stays open (owned by the process) for later dials.
pub fn dial_from_env() -> io::Result<UnixStream> {
    let fd: i32 = std::env::var(BROKER_FD_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{BROKER_FD_VAR} is not set: start the program with `keyward run --broker fd`"
                ),
            )
        })?;
    keyward_sys::broker_dial_inherited(fd).map(UnixStream::from)
}

/// Hands the daemon's end of a broker to the daemon at `socket` for
/// `run_id` (blocking; `keyward run` calls it before starting the program).
pub fn attach(
    socket: &Path,
    run_id: &str,
    token: &str,
    daemon_end: OwnedFd,
) -> io::Result<BrokerAttached> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let body = serde_json::to_vec(&BrokerAttach {
        token: token.to_owned(),
    })
    .map_err(io::Error::other)?;
    let mut request = format!(
        "POST /v1/runs/{run_id}/broker HTTP/1.1\r\nhost: keyward\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    // The descriptor rides on the first bytes of the request.
    let sent = keyward_sys::send_with_fd(stream.as_fd(), &request, Some(daemon_end.as_fd()))?;
    drop(daemon_end);
    stream.write_all(&request[sent..])?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    if ok {
        return serde_json::from_str(body).map_err(io::Error::other);
    }
    let why = serde_json::from_str::<ErrorBody>(body)
        .map(|e| format!("{}: {}", e.error.code, e.error.message))
        .unwrap_or_else(|_| head.lines().next().unwrap_or_default().to_owned());
    Err(io::Error::other(format!(
        "the daemon refused the broker: {why}"
    )))
}
