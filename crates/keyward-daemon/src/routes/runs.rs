//! `/v1/runs`: creating, listing and ending runs (what a run may use is
//! in `keyward_runs::authority`, what ending one releases in `run_ending`).

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hyper::body::Bytes;
use keyward_api::{CreateRunRequest, PatchRunRequest, RunCreated, RunInfo, RunList, RunProblems};
use keyward_auth::Principal;
use keyward_proxy::{AllowRule, RunContext};

use crate::runner_auth::{self, RunnerAuth};
use keyward_vault::ResolveError;

use crate::admin_listener::Peer;
use crate::api_error::ApiError;
use crate::routes::json_body;
use crate::run_ending::{owned_by, release, watch_exit};
use crate::state::AppState;
use keyward_evidence::Kind;
use keyward_runs::{RunRecord, RunsError};
use serde_json::json;

impl From<RunsError> for ApiError {
    fn from(e: RunsError) -> Self {
        tracing::error!("{e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "runs_io", e.to_string())
    }
}

fn check_grants(state: &AppState, req: &CreateRunRequest) -> Result<Vec<String>, ApiError> {
    let config = state.config();
    let grants = &config.grants;
    let mut vars = Vec::new();
    for name in &req.grants {
        let grant = grants.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_grant",
                format!(
                    "no grant named {name}; grants are {} (see `keyward grant list`)",
                    grants.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if let Some(var) = &grant.placeholder_env {
            vars.push(var.clone());
        }
    }
    if req.base_url
        && !req
            .grants
            .iter()
            .any(|g| grants.get(g).is_some_and(|g| g.base_url.is_some()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_base_url",
            "--base-url: none of the run's grants has a base-URL variable \
             (set base_url_env in [grants.NAME]; presets anthropic, openai, github and npm have one)",
        ));
    }
    if req.broker && req.base_url {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a run has either an fd broker (no token in its environment) or base-URL endpoints (the token is in their path), not both",
        ));
    }
    for allow in &req.allow {
        AllowRule::parse(allow).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("allow: {e}"),
            )
        })?;
    }
    // Read and compiled once, when the run's authority is frozen.
    if let Some(path) = &req.policy
        && !std::path::Path::new(path).is_absolute()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_policy",
            format!("policy: {path:?} must be an absolute path"),
        ));
    }
    Ok(vars)
}

/// The child's environment for a run: proxy variables and CA trust.
fn run_env(state: &AppState, proxy_url: &str) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        // gRPC C-core reads grpc_proxy first and no_grpc_proxy before no_proxy.
        "grpc_proxy",
    ] {
        env.insert(var.to_owned(), proxy_url.to_owned());
    }
    env.insert("NO_PROXY".to_owned(), String::new());
    env.insert("no_proxy".to_owned(), String::new());
    env.insert("no_grpc_proxy".to_owned(), String::new());
    let bundle = state.bundle_path().display().to_string();
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "DENO_CERT",
        // gRPC C-core (Python, Ruby, C++ ...) ignores SSL_CERT_FILE.
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    ] {
        env.insert(var.to_owned(), bundle.clone());
    }
    env
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunCreated>, axum::response::Response> {
    use axum::response::IntoResponse;
    let req: CreateRunRequest = json_body(body).map_err(IntoResponse::into_response)?;
    // A token's role must hold each grant the run asks for.
    if let Some(Extension(principal)) = &principal {
        for grant in &req.grants {
            let scope = keyward_auth::Scope::GrantsUse(Some(grant.clone()));
            if !principal.role.allows(&scope) {
                return Err(crate::team_auth::refusal(
                    &keyward_auth::AuthError::ScopeDenied {
                        user: principal.user.clone(),
                        role: principal.role.name.clone(),
                        scope: scope.to_string(),
                    },
                ));
            }
        }
    }
    let token_user = principal.map(|Extension(p)| p.user);
    create_run(state, peer, token_user, req)
        .await
        .map_err(IntoResponse::into_response)
}

async fn create_run(
    state: Arc<AppState>,
    peer: Peer,
    token_user: Option<String>,
    req: CreateRunRequest,
) -> Result<Json<RunCreated>, ApiError> {
    if let Some(pid) = req.pid {
        check_run_pid(&state, &peer, pid, None)?;
    }
    let vars = check_grants(&state, &req)?;
    let runner = RunnerAuth::check(&state, &req.runner_auth, None).await;
    if let Some(failure) = &runner.failure {
        return Err(runner_auth::refuse_run(failure));
    }
    let claims = runner.verified.map(|v| v.claims);
    runner_auth::check_grant_requirements(&state.config().grants, &req.grants, claims.as_ref())?;
    // The path as the daemon will find it again: absolute, with no link
    // anywhere in it (a parent swapped for a link later would point the
    // removal elsewhere).
    if let Some(dir) = &req.private_tmp
        && (!keyward_runs::sandbox::is_private_tmp(std::path::Path::new(dir))
            || std::path::Path::new(dir).canonicalize().ok().as_deref()
                != Some(std::path::Path::new(dir))
            || !owned_by(std::path::Path::new(dir), peer.uid)
            || state
                .runs
                .list()
                .iter()
                .any(|r| r.private_tmp.as_deref() == Some(dir.as_str())))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "private_tmp: {dir:?} is not a private temporary directory keyward made for the caller, or another run has it"
            ),
        ));
    }
    // Frozen now, with its record: a later config (edited by anyone, then
    // a restart) cannot widen what this run may use.
    let (authority, frozen) = state
        .authority
        .freeze(&req.grants, req.policy.as_deref())
        .map_err(|e| match e {
            keyward_runs::frozen::FrozenError::Invalid(_)
            | keyward_runs::frozen::FrozenError::Policy(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_policy", e.to_string())
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "runs_io", e.to_string()),
        })?;
    crate::run_trust::ensure_key(&state).await;
    let owner = keyward_runs::Owner {
        uid: peer.uid,
        token_user,
    };
    let (mut run, token) = state.runs.create(&req, &vars, owner, authority)?;
    state.authority.adopt(&run.id, frozen);
    if let Some(claims) = claims {
        run = state.runs.bind_runner(&run.id, claims)?.unwrap_or(run);
    }
    if let (Some(cgroups), Some(pid)) = (&state.cgroups, run.pid) {
        match cgroups.adopt(&run.id, pid) {
            Ok((cgroup, origin)) => {
                run = state
                    .runs
                    .set_cgroup(&run.id, cgroup, origin)?
                    .unwrap_or(run);
            }
            Err(e) => tracing::warn!(
                run = run.id,
                "the run's processes are tracked by ancestry only: {e}"
            ),
        }
    }
    // Resolve now so a sealed vault or a missing secret fails here, loudly,
    // not at the child's first request.
    let (ctx, failures) = state.authority.build(&run).await;
    if !failures.is_empty() {
        if let Ok(Some(run)) = state.runs.remove(&run.id) {
            release(&state, &run);
        }
        if failures.iter().any(|(_, e)| *e == ResolveError::Sealed) {
            return Err(ApiError::new(
                StatusCode::LOCKED,
                "vault_sealed",
                ResolveError::Sealed.to_string(),
            ));
        }
        let why: Vec<String> = failures.iter().map(|(g, e)| format!("{g}: {e}")).collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "secret_unavailable",
            format!(
                "the secret of a grant does not resolve ({}); see `keyward grant list`",
                why.join("; ")
            ),
        ));
    }
    let drop_env = env_to_drop(&state, &run, &ctx, &req);
    // No run starts off the record (a full disk stops it here).
    let mut created = json!({"event": "run_created", "run": run.info()});
    state.redact(&mut created);
    if let Err(e) = state
        .evidence
        .append(Kind::Run, Some(run.id.clone()), created)
        .await
    {
        tracing::error!("evidence log: {e}");
        if let Ok(Some(run)) = state.runs.remove(&run.id) {
            release(&state, &run);
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "evidence_unavailable",
            format!("the run's creation could not be recorded, so it does not start: {e}"),
        ));
    }
    if let Some(pid) = run.pid {
        watch_exit(&state, &run.id, pid);
    }
    let port = state.proxy_port;
    let proxy_url = format!("http://run:{token}@127.0.0.1:{port}");
    tracing::info!(run = run.id, grants = run.grants.join(","), pid = ?run.pid, "run registered");
    let env = if req.broker {
        // No proxy, no token, no CA: the broker's descriptor is the way out.
        std::collections::BTreeMap::from([(
            keyward_api::broker::BROKER_FD_VAR.to_owned(),
            "3".to_owned(),
        )])
    } else {
        let mut env = run_env(&state, &proxy_url);
        if req.base_url {
            env.extend(base_url_env(&state, &run, &token));
            // Tools send base-URL requests straight to the endpoint, not
            // through the proxy to itself.
            for var in ["NO_PROXY", "no_proxy"] {
                env.insert(var.to_owned(), "127.0.0.1,localhost".to_owned());
            }
        }
        env
    };
    Ok(Json(RunCreated {
        run_id: run.id.clone(),
        env,
        proxy_url,
        token,
        placeholders: run.placeholders.clone(),
        drop_env,
    }))
}

/// `keyward run --base-url`: each grant's base-URL variable, set to its
/// plain-HTTP endpoint on the proxy's loopback port.
fn base_url_env(
    state: &AppState,
    run: &RunRecord,
    token: &str,
) -> std::collections::BTreeMap<String, String> {
    let config = state.config();
    run.grants
        .iter()
        .filter_map(|name| {
            let (var, path) = config.grants.get(name)?.base_url.clone()?;
            let url = format!(
                "http://127.0.0.1:{}/r/{token}/{name}{path}",
                state.proxy_port
            );
            Some((var, url))
        })
        .collect()
}

/// The caller's variables that hold one of the run's secrets (compared by
/// SHA-256), plus those named by its grants' `env:` references.
fn env_to_drop(
    state: &AppState,
    run: &RunRecord,
    ctx: &RunContext,
    req: &CreateRunRequest,
) -> Vec<String> {
    use secrecy::ExposeSecret;
    let secret_hashes: Vec<String> = ctx
        .credentials
        .iter()
        .map(|c| keyward_runs::token_hash(c.secret.expose_secret()))
        .collect();
    let mut drop: Vec<String> = req
        .env_sha256
        .iter()
        .filter(|(_, h)| secret_hashes.iter().any(|s| s.eq_ignore_ascii_case(h)))
        .map(|(k, _)| k.clone())
        .collect();
    let config = state.config();
    for name in &run.grants {
        if let Some(keyward_vault::SecretRef::Env(var)) = config.grants.get(name).map(|g| &g.secret)
            && !drop.contains(var)
        {
            drop.push(var.clone());
        }
    }
    drop
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
) -> Json<RunList> {
    let principal = principal.as_ref().map(|Extension(p)| p);
    Json(RunList {
        runs: state
            .runs
            .list()
            .iter()
            .filter(|r| visible(&peer, principal, r))
            .map(RunRecord::info)
            .collect(),
    })
}

/// Administrators see every run; other users only their own.
fn visible(peer: &Peer, principal: Option<&Principal>, run: &RunRecord) -> bool {
    match principal {
        // A token decides in place of the uid: its user's runs, or all of
        // them with the admin scope.
        Some(principal) => {
            principal.role.allows(&keyward_auth::Scope::Admin)
                || run.token_user.as_deref() == Some(principal.user.as_str())
        }
        None => peer.admin || run.uid == Some(peer.uid),
    }
}

/// The run `id` as `peer` may see it.
fn visible_run(
    state: &AppState,
    peer: &Peer,
    principal: Option<&Principal>,
    id: &str,
) -> Result<RunRecord, ApiError> {
    state
        .runs
        .get(id)
        .filter(|r| visible(peer, principal, r))
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "run_not_found",
        format!("no run {id}"),
    )
}

pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    visible_run(&state, &peer, principal.as_ref().map(|Extension(p)| p), &id).map(|r| {
        let mut info = r.info();
        info.problems = state.run_reports.peek(&id);
        Json(info)
    })
}

/// How long `GET /v1/runs/{id}/problems` holds a request with nothing new
/// before answering unchanged (the caller asks again).
const PROBLEMS_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// `GET /v1/runs/{id}/problems?seen=N`: the run's problems once more than
/// `N` requests were noted (a long poll: `keyward run --verbose` reports
/// them as they happen).
pub(crate) async fn problems(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RunProblems>, ApiError> {
    visible_run(&state, &peer, principal.as_ref().map(|Extension(p)| p), &id)?;
    let seen = match query.as_deref().and_then(|q| q.strip_prefix("seen=")) {
        None if query.is_none() => Some(0),
        Some(n) => n.parse::<u64>().ok(),
        None => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the only query parameter is seen=N (a count from an earlier answer)",
        )
    })?;
    let answer = state.run_reports.wait_past(&id, seen, PROBLEMS_WAIT).await;
    // The run may have ended while the request waited.
    visible_run(&state, &peer, principal.as_ref().map(|Extension(p)| p), &id)?;
    Ok(Json(answer))
}

/// A run may be tied only to the caller itself or one of its descendants,
/// of the caller's own user, and to no process another run already has:
/// membership is "the run's pid among a process's ancestors", so a run on
/// pid 1 (or another user's process) would take in every process under it.
fn check_run_pid(
    state: &AppState,
    peer: &Peer,
    pid: u32,
    run: Option<&str>,
) -> Result<(), ApiError> {
    let refuse = |why: String| {
        tracing::warn!(pid, uid = peer.uid, "refused a run's pid: {why}");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_run_pid",
            format!("pid {pid} cannot hold a run: {why}"),
        ))
    };
    if pid <= 1 || pid == std::process::id() {
        return refuse("it is init or the daemon".to_owned());
    }
    if state
        .runs
        .list()
        .iter()
        .any(|r| r.pid == Some(pid) && Some(r.id.as_str()) != run)
    {
        return refuse("another run is tied to it".to_owned());
    }
    let Some(caller) = peer.pid.and_then(|p| u32::try_from(p).ok()) else {
        return refuse("the caller's own pid is unknown".to_owned());
    };
    match keyward_runs::process_uid(pid) {
        Some(uid) if uid == peer.uid => {}
        Some(_) => return refuse("it belongs to another user".to_owned()),
        None => return refuse("no such process".to_owned()),
    }
    if !keyward_runs::is_self_or_descendant(pid, caller) {
        return refuse("it is neither the caller nor one of its descendants".to_owned());
    }
    Ok(())
}

pub(crate) async fn patch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunInfo>, ApiError> {
    let req: PatchRunRequest = json_body(body)?;
    visible_run(&state, &peer, principal.as_ref().map(|Extension(p)| p), &id)?;
    if let Some(pid) = req.pid {
        check_run_pid(&state, &peer, pid, Some(&id))?;
    }
    let run = state
        .runs
        .set_pid(&id, req.pid)?
        .ok_or_else(|| not_found(&id))?;
    match run.pid {
        Some(pid) => watch_exit(&state, &id, pid),
        None => state.exit_watchers.end(&id),
    }
    Ok(Json(run.info()))
}

pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let run = visible_run(&state, &peer, principal.as_ref().map(|Extension(p)| p), &id)?;
    // Taken before the run is released (which forgets it).
    let problems = state.run_reports.take(&id);
    if let Some(removed) = state.runs.remove(&id)? {
        release(&state, &removed);
    }
    tracing::info!(run = id, "run removed");
    state
        .audit(Kind::Run, Some(&id), json!({"event": "run_removed"}))
        .await;
    let mut info = run.info();
    info.problems = problems;
    Ok(Json(info))
}

/// `POST /v1/ca/rotate`: a new CA; the previous one stays in the bundle.
pub(crate) async fn rotate_ca(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ca = state.ca.clone();
    tokio::task::spawn_blocking(move || ca.rotate())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ca_io", e.to_string()))?;
    tracing::info!("local CA rotated; leaf cache flushed");
    if let Err(e) = state.publish_bundle() {
        tracing::error!("cannot publish the CA trust bundle for other users: {e}");
    }
    state
        .audit(Kind::Admin, None, json!({"event": "ca_rotated"}))
        .await;
    Ok(Json(serde_json::json!({
        "status": "rotated",
        "ca": state.ca.public_cert_path(),
        "bundle": state.ca.bundle_path(),
    })))
}
