//! Who may call which admin route: the confinement of processes inside
//! runs, a bearer token's role (team mode) or else the caller's uid, and
//! per-request accounting for idle exit.

use std::sync::Arc;
use std::time::Duration;

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
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = confinement_refusal(&state, &peer, &req) {
        return refuse_after_body(req, refusal).await;
    }
    // A bearer token decides by its role, in place of the caller's uid
    // (health stays open to anyone who reaches the socket).
    let health = req.method() == Method::GET && req.uri().path() == "/v1/health";
    let principal = match crate::team_auth::presented_token(req.headers()) {
        Some(token) if !health => match state.team.check(token, req.method(), req.uri().path()) {
            Ok(principal) => Some(principal),
            Err(e) => {
                tracing::info!(
                    uid = peer.uid,
                    path = req.uri().path(),
                    code = e.code(),
                    "refused a token: {e}"
                );
                return refuse_after_body(req, crate::team_auth::refusal(&e)).await;
            }
        },
        _ => None,
    };
    if let Some(principal) = &principal {
        req.extensions_mut().insert(principal.clone());
    } else if !peer.admin && !user_route(req.method(), req.uri().path()) {
        let refusal = ApiError::new(
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
        return refuse_after_body(req, refusal).await;
    }
    let activity = &state.activity;
    activity.request_started();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    activity.request_ended();
    tracing::debug!(%method, path, status = resp.status().as_u16(), uid = peer.uid, pid = ?peer.pid, "admin request");
    // A token's requests are attributed to its user, and another user's
    // to its uid, in the evidence log (the daemon's own user is implied by
    // every other record).
    if principal.is_some()
        || (peer.uid != state.daemon_uid && !(method == Method::GET && path == "/v1/health"))
    {
        let mut record = serde_json::json!({"event": "admin_request", "method": method.as_str(),
            "path": path, "status": resp.status().as_u16(), "uid": peer.uid,
            "pid": peer.pid});
        if let Some(principal) = &principal {
            record["user"] = principal.user.clone().into();
            record["role"] = principal.role.name.clone().into();
        }
        state.audit(Kind::Admin, None, record).await;
    }
    resp
}

/// Answers `refusal` once the request's body is read (as much as the API
/// takes): a Unix socket closed with unread bytes resets the connection,
/// and the client could lose the answer that says why.
async fn refuse_after_body(req: Request, refusal: Response) -> Response {
    use http_body_util::BodyExt as _;
    // Read and dropped a frame at a time (nothing is kept), at most as
    // much as the API takes and for at most a few seconds: a client that
    // sends more, or trickles, loses its answer, not the daemon's memory.
    const LARGEST_BODY: usize = 2 << 20;
    const DEADLINE: Duration = Duration::from_secs(5);
    let mut body = req.into_body();
    let _ = tokio::time::timeout(DEADLINE, async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > LARGEST_BODY {
                break;
            }
        }
    })
    .await;
    refusal
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

/// Whether `req` is the run's own `keyward run` process removing that run,
/// handing over its fd broker, or following its problems (`--verbose`).
fn own_run_request(state: &AppState, peer: &Peer, req: &Request, run: &str) -> bool {
    let path = req.uri().path().strip_prefix("/v1/runs/");
    let own_route = match *req.method() {
        Method::DELETE => path == Some(run),
        Method::POST => path.and_then(|p| p.strip_suffix("/broker")) == Some(run),
        Method::GET => path.and_then(|p| p.strip_suffix("/problems")) == Some(run),
        _ => false,
    };
    own_route && state.runs.get(run).and_then(|r| r.pid).map(i64::from) == peer.pid.map(i64::from)
}
