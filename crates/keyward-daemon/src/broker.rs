//! The fd broker, daemon side. `keyward run --broker fd` makes a
//! `SOCK_SEQPACKET` pair, gives one end to the program as its fd 3 and
//! sends the other here with `POST /v1/runs/{id}/broker` (`SCM_RIGHTS` on
//! the admin socket). Protocol version 1: the program sends one byte
//! `0x01` (dial); the broker answers `0x01` with exactly one descriptor, a
//! fresh stream served by the proxy's pipeline for this run, or `0xFF`
//! with none when the message is malformed (any other byte or length, or
//! descriptors attached) or cannot be served. EOF means the broker is gone
//! (the run ended or the daemon stopped).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use hyper::body::Bytes;
use keyward_api::{BrokerAttach, BrokerAttached};
use keyward_evidence::Kind;
use keyward_proxy::Proxy;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::admin_listener::Peer;
use crate::api_error::ApiError;
use crate::routes::json_body;
use crate::state::AppState;

/// The broker protocol's version (`BrokerAttached::protocol`).
const PROTOCOL: u32 = 1;
const DIAL: u8 = 0x01;
const REFUSED: u8 = 0xFF;
/// The receive buffer: one byte more than a dial, so that a longer
/// message shows its length instead of only the kernel's truncation flag.
pub const MESSAGE_BYTES: usize = 2;
/// Streams one broker may have open at once; dials beyond get `0xFF`, so
/// a program cannot take the daemon's descriptors.
const MAX_STREAMS: usize = 256;

/// `POST /v1/runs/{id}/broker`: the run's own `keyward run` hands over the
/// daemon's end of its broker, with the run token as proof.
pub(crate) async fn attach(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BrokerAttached>, ApiError> {
    let req: BrokerAttach = json_body(body)?;
    let fd = peer.inbox.take();
    let run = state
        .runs
        .get(&id)
        .filter(|r| peer.admin || r.uid == Some(peer.uid))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("no run {id}"),
            )
        })?;
    if state.runs.id_for_token(&req.token).as_deref() != Some(run.id.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_token",
            format!("the token is not run {id}'s"),
        ));
    }
    let fd = fd
        .filter(|fd| keyward_sys::is_unix_seqpacket(fd.as_fd()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_broker_fd",
                "send the daemon's end of a SOCK_SEQPACKET socketpair with this request (SCM_RIGHTS)",
            )
        })?;
    let proxy = state.proxy.clone();
    let fd = keyward_sys::AsyncSeqpacket::new(fd).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "broker_io",
            format!("cannot watch the broker: {e}"),
        )
    })?;
    let task = tokio::spawn(serve(fd, req.token, proxy, run.id.clone()));
    state.brokers.keep(&run.id, task.abort_handle());
    tracing::info!(run = run.id, "fd broker attached");
    state
        .audit(
            Kind::Run,
            Some(&run.id),
            json!({"event": "broker_attached", "protocol": PROTOCOL}),
        )
        .await;
    Ok(Json(BrokerAttached {
        run_id: run.id,
        protocol: PROTOCOL,
    }))
}

/// Answers the run's dials until the program's end closes.
async fn serve(fd: keyward_sys::AsyncSeqpacket, token: String, proxy: Arc<Proxy>, run_id: String) {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    loop {
        let mut message = [0u8; MESSAGE_BYTES];
        // No room for descriptors: any the program attaches are closed by
        // the kernel and the message is flagged truncated.
        let got = match fd.recv(&mut message, 0).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(run = run_id, "fd broker: cannot read: {e}; it stops");
                return;
            }
        };
        if got.eof {
            tracing::debug!(run = run_id, "fd broker: the program's end closed");
            return;
        }
        let minted = match decide(&message[..got.len], got.truncated) {
            Decision::Dial => mint(&proxy, &token, &streams),
            Decision::Refuse(why) => {
                tracing::debug!(run = run_id, "fd broker: malformed dial refused: {why}");
                None
            }
        };
        let answer = match &minted {
            Some(theirs) => fd.send(&[DIAL], Some(theirs.as_fd())).await,
            None => fd.send(&[REFUSED], None).await,
        };
        // Our copy of the program's end closes here, whatever happened.
        drop(minted);
        if let Err(e) = answer {
            tracing::debug!(
                run = run_id,
                "fd broker: the program is gone ({e}); it stops"
            );
            return;
        }
    }
}

/// What the broker does with one message from the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Exactly the byte `0x01` and nothing else: a stream is minted.
    Dial,
    /// Anything else: answered `0xFF`, and the broker keeps serving.
    Refuse(Malformed),
}

/// Why a message is not a dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Longer than the buffer, or descriptors came with it (the kernel
    /// closed them).
    Truncated,
    /// No bytes (a zero-length message, not the end of the stream).
    Empty,
    /// More than one byte.
    TooLong(usize),
    /// One byte, not `0x01`.
    UnknownByte(u8),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Truncated => f.write_str("larger than a dial, or with descriptors attached"),
            Malformed::Empty => f.write_str("an empty message"),
            Malformed::TooLong(len) => write!(f, "{len} bytes; a dial is 1"),
            Malformed::UnknownByte(byte) => write!(f, "byte {byte:#04x}; a dial is 0x01"),
        }
    }
}

/// Judges one received message: `received` is what the kernel wrote into
/// the buffer, `truncated` its flag that the message (or its descriptors)
/// did not fit.
pub fn decide(received: &[u8], truncated: bool) -> Decision {
    let why = match received {
        _ if truncated => Malformed::Truncated,
        [] => Malformed::Empty,
        [DIAL] => return Decision::Dial,
        [byte] => Malformed::UnknownByte(*byte),
        _ => Malformed::TooLong(received.len()),
    };
    Decision::Refuse(why)
}

/// A fresh stream for the program: ours is served by the pipeline before
/// theirs is handed out, so a dial never leaves the program on a
/// connection nobody serves.
fn mint(proxy: &Arc<Proxy>, token: &str, streams: &Arc<Semaphore>) -> Option<OwnedFd> {
    let Ok(permit) = streams.clone().try_acquire_owned() else {
        tracing::warn!("fd broker: {MAX_STREAMS} streams open; dial refused");
        return None;
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .inspect_err(|e| tracing::warn!("fd broker: cannot make a stream: {e}"))
        .ok()?;
    ours.set_nonblocking(true).ok()?;
    let ours = tokio::net::UnixStream::from_std(ours)
        .inspect_err(|e| tracing::warn!("fd broker: cannot serve a stream: {e}"))
        .ok()?;
    // The run's permit lives as long as the stream is served.
    if !proxy.admit_broker_stream(ours, token.to_owned(), permit) {
        return None;
    }
    Some(OwnedFd::from(theirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_dial_byte_without_descriptors_dials() {
        assert_eq!(decide(&[DIAL], false), Decision::Dial);
        for (received, truncated, why) in [
            (&[DIAL][..], true, Malformed::Truncated),
            (&[DIAL, DIAL][..], true, Malformed::Truncated),
            (&[][..], false, Malformed::Empty),
            (&[DIAL, 0][..], false, Malformed::TooLong(2)),
            (&[REFUSED][..], false, Malformed::UnknownByte(REFUSED)),
        ] {
            assert_eq!(
                decide(received, truncated),
                Decision::Refuse(why),
                "{received:?}"
            );
        }
    }
}
