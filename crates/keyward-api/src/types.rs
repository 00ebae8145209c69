//! Request and response bodies of the admin API.

use serde::{Deserialize, Serialize};

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// Always `"ok"` when the daemon answers.
    pub status: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's version.
    pub version: String,
    /// The git commit the daemon was built from.
    pub commit: String,
    /// When the daemon started, RFC 3339 UTC.
    pub started_at: String,
    /// Whole seconds since start.
    pub uptime_s: u64,
    /// Features this daemon serves, so a newer client can tell what an older
    /// daemon lacks without probing routes.
    pub capabilities: Vec<String>,
    /// The egress proxy's port on 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<u16>,
    /// Why the evidence log cannot write, while it cannot (a full disk):
    /// decisions and proxied requests are refused meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_error: Option<String>,
    /// What the daemon found wrong with the evidence log's tail at start
    /// (records deleted after the head checkpoint, a missing or untrusted
    /// checkpoint); also recorded in the log. Until the daemon stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_warning: Option<String>,
    /// The last config reload failed (the previous config stays in
    /// effect): when and why. Cleared by the next reload that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_failed: Option<ReloadFailure>,
    /// The gRPC listener for remote callers, when `[server.grpc]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcListening>,
}

/// Where the gRPC API listens, and how it is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcListening {
    /// The bound address (`0.0.0.0:50051`).
    pub addr: String,
    /// `tls`, `mutual_tls`, or `none` (tokens cross the network in clear).
    pub tls: String,
}

/// A config reload that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Why (names the file, the key and what was expected).
    pub error: String,
}

/// Every error response: `{"error":{"code":"snake_case","message":"..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `bad_request`.
    pub code: String,
    /// Human-readable explanation: what happened and what to do.
    pub message: String,
}

/// `POST /v1/shutdown` body; the body may also be empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShutdownRequest {
    /// Why, recorded in the daemon's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/shutdown` answer, sent before the daemon starts draining.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShutdownResponse {
    /// `"shutting_down"`.
    pub status: String,
    /// The daemon's process id, so a caller can wait for it to exit.
    pub pid: u32,
}
