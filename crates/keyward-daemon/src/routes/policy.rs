//! `POST /v1/evaluate`: a decision, durably recorded before it is answered.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use hyper::body::Bytes;
use keyward_api::{DecisionResponse, EvaluateRequest, RequestError};
use keyward_evidence::Kind;
use keyward_policy::Policy;

use crate::admin_listener::Peer;
use crate::api_error::ApiError;
use crate::routes::body_bytes;
use crate::runner_auth::{self, RunnerAuth};
use crate::state::AppState;
use keyward_runs::RunRecord;

/// `dec_` + 12 hex.
fn decision_id() -> String {
    format!("dec_{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// The run the caller belongs to (its pid or an ancestor is a run's), if
/// any: looked up only while runs exist, since it reads `/proc`.
fn calling_run(state: &AppState, peer: Peer) -> Option<RunRecord> {
    if state.runs.is_empty() {
        return None;
    }
    let pid = peer.pid.and_then(|p| u32::try_from(p).ok())?;
    let id = state.runs.confining(pid)?;
    state.runs.get(&id)
}

/// The policy a request asks for: the configured one (or, for a caller
/// inside a run with its own policy, that one), or the built-in pack by
/// name.
fn pick_policy(
    state: &AppState,
    run: Option<&RunRecord>,
    pack: Option<&str>,
) -> Result<Arc<Policy>, ApiError> {
    let config = state.config();
    let configured = match run {
        Some(run) => state.authority.policy_for(&config, run),
        None => config.policy.clone(),
    };
    match pack {
        None => Ok(configured),
        Some(id) if id == configured.id() => Ok(configured),
        // A process inside a run is decided by its run's policy: naming
        // another pack (a laxer one) is refused, not obeyed.
        Some(id) if run.is_some() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "policy_pack_refused",
            format!(
                "policy_pack {id:?}: a process inside a run is decided by its run's policy ({:?}) and cannot pick another",
                configured.id()
            ),
        )),
        Some(keyward_policy::BASELINE_ID) => Ok(state.baseline.clone()),
        Some(id) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_policy_pack",
            format!(
                "policy_pack {id:?} is not loaded; loaded: {:?} and {:?}",
                configured.id(),
                keyward_policy::BASELINE_ID
            ),
        )),
    }
}

/// A request that cannot be decided, as the 400 that says why.
fn refused(e: RequestError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message)
}

/// The request body, read strictly: malformed JSON, an unknown field
/// (with "did you mean") or a missing target is a 400 naming it, never a
/// decision on less than the caller meant.
fn request(body: Result<Bytes, BytesRejection>) -> Result<EvaluateRequest, ApiError> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // No request at all: what is missing first is its action_type.
        return Err(refused(EvaluateRequest::default().check().unwrap_err()));
    }
    EvaluateRequest::from_json(&bytes).map_err(|mut e| {
        if e.message.starts_with("malformed JSON") {
            e.message =
                e.message
                    .replacen("malformed JSON", "malformed JSON in the request body", 1);
        }
        refused(e)
    })
}

/// Decides `req` against `policy` (no I/O).
pub(crate) fn decide(policy: &Policy, req: &EvaluateRequest) -> DecisionResponse {
    let verdict = policy.evaluate(req);
    let decision_id = decision_id();
    let correlation_id = req
        .context
        .get("correlation_id")
        .and_then(|v| v.as_str())
        .map_or_else(|| decision_id.clone(), str::to_owned);
    DecisionResponse {
        decision_id,
        decision: verdict.decision(),
        rule_id: verdict.rule.id.clone(),
        matched_command: verdict.matched_command,
        severity: verdict.rule.severity,
        reason: verdict.rule.reason.clone(),
        approver_group: verdict.rule.approver_group.clone(),
        policy_id: policy.id().to_owned(),
        session_id: req.session_id.clone().unwrap_or_else(|| "local".to_owned()),
        agent_id: req
            .agent_id
            .clone()
            .unwrap_or_else(|| "unknown-agent".to_owned()),
        actor: req.actor.clone().unwrap_or_else(|| "ai-agent".to_owned()),
        action_type: req.action_type.clone(),
        target: req.target.clone(),
        requested_operation: req.requested_operation.clone(),
        evidence_refs: Vec::new(),
        correlation_id,
        timestamp: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
    }
}

pub(crate) async fn evaluate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DecisionResponse>, ApiError> {
    // Announced first, so an fsync starting meanwhile may wait for it.
    let slot = state.evidence.reserve();
    let req = request(body)?;
    let run = calling_run(&state, peer);
    decide_on_record(&state, slot, req, run, None)
        .await
        .map(Json)
}

/// Decides `req` for a caller in `run` (if any) and answers once the
/// decision is on disk; `caller` (a remote caller's token user) is written
/// with it.
pub(crate) async fn decide_on_record(
    state: &Arc<AppState>,
    slot: keyward_evidence::Slot,
    mut req: EvaluateRequest,
    run: Option<RunRecord>,
    caller: Option<serde_json::Value>,
) -> Result<DecisionResponse, ApiError> {
    let policy = pick_policy(state, run.as_ref(), req.policy_pack.as_deref())?;
    // An action the policy reads as shell lines needs its line, whatever
    // its name.
    if policy.reads_shell_lines(&req.action_type) {
        req.check_target(Some("the command line"))
            .map_err(refused)?;
    }
    let runner =
        RunnerAuth::check(state, &std::mem::take(&mut req.runner_auth), run.as_ref()).await;
    req.verified_runner = runner.claims();
    req.verified_runner_auth = runner.provenance();
    let mut resp = decide(&policy, &req);
    if let Some(failure) = runner.refusal() {
        runner_auth::block(&mut resp, failure);
    }
    let mut data = state.evidence_data(&req, &resp);
    runner.record(&mut data);
    if let Some(caller) = caller {
        data["caller"] = caller;
    }
    // Answered only once the decision is on disk.
    let evidence_ref = state
        .evidence
        .append_reserved(slot, Kind::Decision, run.map(|r| r.id), data)
        .await
        .map_err(|e| {
            tracing::error!("evidence log: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "evidence_unavailable",
                format!("the decision could not be recorded, so it is not given: {e}"),
            )
        })?;
    resp.evidence_refs.push(evidence_ref);
    Ok(resp)
}
