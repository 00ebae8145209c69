//! `GET /v1/health` and `POST /v1/shutdown`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use hyper::body::Bytes;
use keyward_api::{Health, ShutdownRequest, ShutdownResponse};

use super::json_body;
use crate::api_error::ApiError;
use crate::state::{AppState, StopReason};

/// What the API can do in this build, reported by `/v1/health`.
const CAPABILITIES: &[&str] = &[
    "health",
    "shutdown",
    "reload",
    "vault",
    "secrets",
    "grants",
    "runs",
    "proxy",
    "evaluate",
    "evidence",
    "runner_auth",
];

pub(super) async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(state.health())
}

impl AppState {
    /// What `GET /v1/health` answers (the gRPC API's health too).
    pub(crate) fn health(&self) -> Health {
        let state = self;
        Health {
            status: "ok".to_owned(),
            pid: std::process::id(),
            version: keyward_api::VERSION.to_owned(),
            commit: keyward_api::COMMIT.to_owned(),
            started_at: humantime::format_rfc3339_seconds(state.started_at).to_string(),
            uptime_s: state.started.elapsed().as_secs(),
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            proxy_port: Some(state.proxy_port),
            evidence_error: state.evidence.unwritable(),
            evidence_warning: state.evidence.tail_problem().map(|p| p.message.clone()),
            reload_failed: state
                .reload_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            grpc: state.grpc.get().cloned(),
        }
    }
}

pub(super) async fn shutdown(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ShutdownResponse>, ApiError> {
    let req: ShutdownRequest = json_body(body)?;
    // A full channel means a stop is already under way; that is success too.
    let _ = state.stop.try_send(StopReason::Api(req.reason));
    Ok(Json(ShutdownResponse {
        status: "shutting_down".to_owned(),
        pid: std::process::id(),
    }))
}
