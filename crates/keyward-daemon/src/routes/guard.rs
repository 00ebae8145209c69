//! Who may call which admin route: admin-only routes, the confinement of
//! processes inside runs, and per-request accounting for idle exit.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyward_evidence::Kind;

use crate::admin_listener::Peer;
use crate::api_error::ApiError;
use crate::state::AppState;
use keyward_runs::Membership;

/// Counts requests in flight for idle exit and logs each at debug level
/// with the peer, so a refused or odd caller can be traced.
pub(super) async fn track(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = confinement_refusal(&state, &peer, &req) {
        return refusal;
    }
    if !peer.admin && !user_route(req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            format!(
                "uid {} may use runs, grants and decisions here; {} {} is for the daemon's \
                 administrators (admin.admin_uids)",
                peer.uid,
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    let activity = &state.activity;
    activity.request_started();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    activity.request_ended();
    tracing::debug!(%method, path, status = resp.status().as_u16(), uid = peer.uid, pid = ?peer.pid, "admin request");
    // Another user's requests are attributed to its uid in the evidence
    // log (the daemon's own user is implied by every other record).
    if peer.uid != state.daemon_uid && !(method == Method::GET && path == "/v1/health") {
        state
            .audit(
                Kind::Admin,
                None,
                serde_json::json!({"event": "admin_request", "method": method.as_str(),
                    "path": path, "status": resp.status().as_u16(), "uid": peer.uid,
                    "pid": peer.pid}),
            )
            .await;
    }
    resp
}

/// Routes any admitted user may call: health, decisions, its own runs,
/// the grants' names.
fn user_route(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET => {
            matches!(path, "/v1/health" | "/v1/grants" | "/v1/runs")
                || path.starts_with("/v1/runs/")
        }
        Method::POST => {
            matches!(path, "/v1/evaluate" | "/v1/runs")
                || (path.starts_with("/v1/runs/") && path.ends_with("/broker"))
        }
        Method::PATCH | Method::DELETE => path.starts_with("/v1/runs/"),
        _ => false,
    }
}

/// Confinement: a process inside a run (or its descendant) may only ask for
/// health and decisions; it cannot grant itself more, list secrets or
/// unseal. The one exception is `keyward run` itself (the run's own pid)
/// ending its run. A caller that cannot be placed (it exited, its ancestry
/// is unreadable) is refused the same way: fail closed.
fn confinement_refusal(state: &AppState, peer: &Peer, req: &Request) -> Option<Response> {
    let open_route = (req.method() == Method::GET && req.uri().path() == "/v1/health")
        || (req.method() == Method::POST && req.uri().path() == "/v1/evaluate");
    if open_route {
        return None;
    }
    let message = match peer.membership(&state.runs) {
        Membership::Outside => return None,
        Membership::Inside(run) if own_run_request(state, peer, req, &run) => return None,
        Membership::Inside(run) => {
            tracing::warn!(pid = ?peer.pid, run, path = req.uri().path(),
                "refused an admin request from inside a run");
            format!("this process runs inside keyward run {run}; the admin API is closed to it")
        }
        Membership::Unknown(why) => {
            tracing::warn!(pid = ?peer.pid, path = req.uri().path(),
                "refused an admin request whose caller cannot be placed: {why}");
            format!(
                "the daemon cannot tell whether this caller runs inside a keyward run ({why}), \
                 so the admin API is closed to it; call it from a live process outside any run"
            )
        }
    };
    Some(ApiError::new(StatusCode::FORBIDDEN, "run_confined", message).into_response())
}

/// Whether `req` is the run's own `keyward run` process removing that run
/// or handing over its fd broker.
fn own_run_request(state: &AppState, peer: &Peer, req: &Request, run: &str) -> bool {
    let path = req.uri().path().strip_prefix("/v1/runs/");
    let own_route = match *req.method() {
        Method::DELETE => path == Some(run),
        Method::POST => path.and_then(|p| p.strip_suffix("/broker")) == Some(run),
        _ => false,
    };
    own_route && state.runs.get(run).and_then(|r| r.pid).map(i64::from) == peer.pid.map(i64::from)
}
