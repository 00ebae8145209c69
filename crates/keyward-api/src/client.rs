//! The admin API client: HTTP/1.1 over the daemon's Unix socket.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::socket_path::{SocketPathTooLong, check_socket_path};
use crate::types::{ErrorBody, Health, ShutdownRequest, ShutdownResponse};

/// How long a call may take before the client gives up.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (absent, or refused).
    #[error(
        "the daemon is not running (socket {}); start it with `keyward daemon start --detach`",
        socket.display()
    )]
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
    },
    /// The socket path cannot be used at all.
    #[error(transparent)]
    SocketPath(#[from] SocketPathTooLong),
    /// Connecting failed for another reason, e.g. permission denied.
    #[error("cannot connect to the keyward daemon at {}: {source}", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No complete answer in time.
    #[error("the keyward daemon at {} did not answer within {}s", socket.display(), timeout.as_secs_f32())]
    Timeout {
        /// The socket tried.
        socket: PathBuf,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The connection broke or the answer was not the expected HTTP/JSON.
    #[error("talking to the keyward daemon at {} failed: {message}", socket.display())]
    Protocol {
        /// The socket tried.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code, e.g. `not_found`.
        code: String,
        /// The daemon's message.
        message: String,
    },
}

/// An answer as it came, for callers that need the status and raw body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// The body bytes.
    pub body: Bytes,
}

/// A client of one daemon's admin socket. Cheap to clone; each call opens
/// its own connection, which over a Unix socket costs microseconds.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", None::<&()>).await
    }

    /// `POST /v1/shutdown`.
    pub async fn shutdown(&self, reason: Option<String>) -> Result<ShutdownResponse, ClientError> {
        let body = ShutdownRequest { reason };
        self.call(Method::POST, "/v1/shutdown", Some(&body)).await
    }

    /// Sends a JSON request and decodes a JSON answer; error answers become
    /// [`ClientError::Api`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| self.protocol(format!("cannot encode the request: {e}")))?;
        let resp = self.send(method, path, body).await?;
        if !resp.status.is_success() {
            return Err(self.api_error(&resp));
        }
        serde_json::from_slice(&resp.body).map_err(|e| {
            self.protocol(format!(
                "unexpected answer to {path} (HTTP {}): {e}",
                resp.status
            ))
        })
    }

    /// Sends a request with an optional raw JSON body and returns the answer
    /// whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ClientError> {
        check_socket_path(&self.socket)?;
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                socket: self.socket.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning {
                            socket: self.socket.clone(),
                        }
                    }
                    _ => ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    },
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let conn = tokio::spawn(conn);

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "keyward")
            .header(
                header::USER_AGENT,
                concat!("keyward/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| self.protocol(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        drop(sender);
        conn.abort();
        Ok(RawResponse { status, body })
    }

    fn api_error(&self, resp: &RawResponse) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(ErrorBody { error }) => ClientError::Api {
                status: resp.status.as_u16(),
                code: error.code,
                message: error.message,
            },
            Err(_) => self.protocol(format!(
                "HTTP {} with a body that is not a keyward error: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            )),
        }
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            message,
        }
    }
}
