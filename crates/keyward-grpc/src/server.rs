//! Serving the API: the `keyward.v1.Keyward` service and the standard
//! `grpc.health.v1.Health` (for load balancers) on one listener, over TLS
//! unless TLS was switched off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt as _;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::proto::keyward_server::KeywardServer;
use crate::service::{Backend, Gate, KeywardService};
use crate::tls::TlsFiles;

/// Why the listener stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be read.
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
    /// The transport failed (a bad certificate or key is found here).
    #[error("the gRPC listener failed: {}", with_sources(.0))]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, with at most
/// `max_connections` connections open at once. `tls: None` serves plain
/// HTTP/2 (only where the network itself is trusted).
pub async fn serve<B: Backend, G: Gate>(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    tls: Option<&TlsFiles>,
    backend: Arc<B>,
    gate: Arc<G>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Bounds a caller cannot lift: calls per connection, streams per
    // connection, a call's time, dead peers found by keepalives, and
    // connections at once (more are closed as they arrive).
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KeywardServer<KeywardService<B, G>>>()
        .await;
    // Load balancers see "not serving" as soon as the stop begins.
    let reporter = health_reporter.clone();
    let shutdown = async move {
        shutdown.await;
        reporter
            .set_not_serving::<KeywardServer<KeywardService<B, G>>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    // The token is checked on the call's headers, before its message is
    // read: a caller without one never gets a body decoded.
    let check = {
        let gate = gate.clone();
        move |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
            let token = crate::service::bearer(request.metadata())?;
            gate.check(token, None)
                .map_err(|e| crate::service::auth_status(&e))?;
            Ok(request)
        }
    };
    // The whole server answers too (the empty service name).
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            KeywardServer::new(KeywardService::new(backend, gate))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            check,
        ))
        .serve_with_incoming_shutdown(limited(listener, max_connections), shutdown)
        .await?;
    Ok(())
}

/// The largest request message (an evaluate request is a few hundred
/// bytes; the admin API takes up to 2 MiB of JSON).
const MAX_MESSAGE_BYTES: usize = 256 << 10;
/// Calls in progress per connection.
const MAX_CALLS_PER_CONNECTION: usize = 64;
/// HTTP/2 streams per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// The longest a call may take (a decision waits for its fsync).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's connections, each holding one of `max` slots for its
/// life; a connection beyond them is closed at once (said in the log at
/// most once a second, so a flood cannot flood the log too).
fn limited(
    listener: tokio::net::TcpListener,
    max: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<Limited>> {
    let slots = Arc::new(Semaphore::new(max));
    let mut last_said: Option<std::time::Instant> = None;
    // No Nagle: a unary call is one small write each way, and waiting for
    // an ACK to coalesce them costs a delayed-ACK interval (~40 ms) a call.
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .filter_map(move |accepted| match accepted {
            Ok(stream) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Limited {
                    inner: stream,
                    _permit: permit,
                })),
                Err(_) => {
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_said = Some(std::time::Instant::now());
                        tracing::warn!(
                            "gRPC connections are at their cap ({max}); closing new ones"
                        );
                    }
                    None
                }
            },
            Err(e) => Some(Err(e)),
        })
}

/// A TCP connection holding a connection slot until it closes.
struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An error with its causes (`transport error: ...: the key does not match`).
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
