//! `/v1/runs` and the proxy's view of runs (token -> credentials).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use hyper::body::Bytes;
use keyward_api::{CreateRunRequest, PatchRunRequest, RunCreated, RunInfo, RunList};
use keyward_policy::Policy;
use keyward_proxy::{AllowRule, Credential, RunAuthority, RunContext, Withheld};

use crate::config::LoadedConfig;
use crate::grants::Grant;
use crate::runner_auth::{self, RunnerAuth};
use keyward_vault::ResolveError;

use crate::runs::{RunRecord, RunsError};
use crate::server::{ApiError, AppState, Peer, json_body};
use keyward_evidence::Kind;
use serde_json::json;

impl From<RunsError> for ApiError {
    fn from(e: RunsError) -> Self {
        tracing::error!("{e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "runs_io", e.to_string())
    }
}

/// A run's authority as it was when the run was created: its grants (with
/// their hosts, injection and secret reference) and its policy. A reload
/// can narrow it (a grant removed, a host dropped) but never widen it.
struct Frozen {
    grants: BTreeMap<String, Grant>,
    policy: Arc<Policy>,
}

/// Resolved credentials per run, built on first use and dropped (zeroized)
/// when the run goes.
pub(crate) struct Authority {
    state: Weak<AppState>,
    /// run id -> (when resolved, the vault values it was resolved against,
    /// context). Re-resolved after `backends.cache_ttl`, so rotated `file:`,
    /// `cmd:` and `openbao:` secrets reach running runs, and at once after
    /// any vault change (set, rm, rollback, seal, unseal).
    contexts: Mutex<HashMap<String, CachedContext>>,
    /// run id -> what the run was created with.
    frozen: Mutex<HashMap<String, Arc<Frozen>>>,
}

struct CachedContext {
    at: std::time::Instant,
    vault: Arc<Vec<secrecy::SecretString>>,
    context: Arc<RunContext>,
}

impl Authority {
    pub(crate) fn new(state: Weak<AppState>) -> Self {
        Self {
            state,
            contexts: Mutex::new(HashMap::new()),
            frozen: Mutex::new(HashMap::new()),
        }
    }

    fn frozen_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Frozen>>> {
        self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `run` was created with; frozen now from the current config if
    /// it has not been yet (a run created before this daemon started).
    fn frozen_for(&self, config: &LoadedConfig, run: &RunRecord) -> Arc<Frozen> {
        if let Some(frozen) = self.frozen_map().get(&run.id) {
            return frozen.clone();
        }
        let frozen = Arc::new(Frozen {
            grants: run
                .grants
                .iter()
                .filter_map(|name| Some((name.clone(), config.grants.get(name)?.clone())))
                .collect(),
            policy: match &run.policy {
                Some(path) => compile_run_policy(run, path),
                None => config.policy.clone(),
            },
        });
        self.frozen_map()
            .entry(run.id.clone())
            .or_insert(frozen)
            .clone()
    }

    /// The policy deciding for `run`: the one it was created with (its own
    /// file or the configured policy), compiled once and kept for the
    /// run's life; a reload does not change it.
    pub(crate) fn policy_for(&self, config: &LoadedConfig, run: &RunRecord) -> Arc<Policy> {
        self.frozen_for(config, run).policy.clone()
    }

    fn contexts(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedContext>> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resolved contexts of live runs: the secret values the daemon
    /// holds right now (evidence redaction looks for them).
    pub(crate) fn live_contexts(&self) -> Vec<Arc<RunContext>> {
        self.contexts()
            .values()
            .map(|cached| cached.context.clone())
            .collect()
    }

    /// Forgets a run entirely.
    pub(crate) fn forget(&self, run_id: &str) {
        self.contexts().remove(run_id);
        self.frozen_map().remove(run_id);
    }

    /// Forgets every run's resolved credentials (config reload): they are
    /// resolved again, narrowed by the new config, on the next request.
    pub(crate) fn forget_credentials(&self) {
        self.contexts().clear();
    }

    /// Resolves a run's grants: each as the run was created with it, less
    /// the hosts the current config no longer gives it; a grant the config
    /// no longer has is left out. A grant that is gone or whose secret does
    /// not resolve is returned with why; the context is then not cached, so
    /// the next request tries again.
    pub(crate) async fn build(
        state: &AppState,
        run: &RunRecord,
    ) -> (RunContext, Vec<(String, ResolveError)>) {
        let config = state.config();
        let resolver = state.resolver();
        let frozen = state.authority.frozen_for(&config, run);
        let mut credentials = Vec::new();
        let mut withheld = Vec::new();
        let mut failures = Vec::new();
        for name in &run.grants {
            let (Some(grant), Some(now)) = (frozen.grants.get(name), config.grants.get(name))
            else {
                tracing::warn!(run = run.id, grant = name, "grant no longer exists");
                failures.push((
                    name.clone(),
                    ResolveError::Missing(format!("grant {name} no longer exists")),
                ));
                continue;
            };
            let hosts: Vec<_> = grant
                .hosts
                .iter()
                .filter(|h| now.hosts.contains(h))
                .cloned()
                .collect();
            if hosts.is_empty() {
                tracing::warn!(
                    run = run.id,
                    grant = name,
                    "grant has none of its hosts left"
                );
                continue;
            }
            match resolver.resolve(&grant.secret).await {
                Ok(secret) => credentials.push(Credential {
                    grant: name.clone(),
                    hosts,
                    inject: grant.inject.clone(),
                    secret,
                    placeholder: grant
                        .placeholder_env
                        .as_ref()
                        .and_then(|var| run.placeholders.get(var).cloned()),
                    plaintext: grant.plaintext,
                    substitute_body: grant.substitute_body,
                }),
                Err(e) => {
                    tracing::warn!(run = run.id, grant = name, "secret does not resolve: {e}");
                    withheld.push(Withheld {
                        grant: name.clone(),
                        hosts,
                        sealed: e == ResolveError::Sealed,
                    });
                    failures.push((name.clone(), e));
                }
            }
        }
        let allow = run
            .allow
            .iter()
            .filter_map(|a| AllowRule::parse(a).ok())
            .collect();
        let ctx = RunContext::new(run.id.clone(), run.network, allow, credentials)
            .with_policy(frozen.policy.clone())
            .with_withheld(withheld);
        (ctx, failures)
    }
}

/// Compiles a run's own policy file. One that no longer loads fails
/// closed: every request is blocked, with the reason in the log and in the
/// block message.
fn compile_run_policy(run: &RunRecord, path: &str) -> Arc<Policy> {
    match Policy::from_file(std::path::Path::new(path)) {
        Ok(policy) => Arc::new(policy),
        Err(e) => {
            tracing::error!(
                run = run.id,
                "the run's policy no longer loads, so its requests are blocked: {e}"
            );
            let closed = "[policy]\nid = \"run-policy-invalid\"\ndefault = \"block\"\n\
                          default_rule_id = \"run.policy.invalid\"\n\
                          default_reason = \"the run's policy file no longer loads; see the daemon log\"\n";
            Arc::new(
                Policy::from_toml(closed, "fail-closed policy")
                    .expect("the fail-closed policy compiles"),
            )
        }
    }
}

impl RunAuthority for Authority {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<RunContext>>> + Send + 'a>> {
        Box::pin(async move {
            let state = self.state.upgrade()?;
            let id = state.runs.id_for_token(token)?;
            state.activity.touch();
            let ttl = state.config().config.backends.cache_ttl.unwrap_or_default();
            let vault = state.vault_values.current();
            if let Some(cached) = self.contexts().get(&id)
                && cached.at.elapsed() < ttl
                && Arc::ptr_eq(&cached.vault, &vault)
            {
                return Some(cached.context.clone());
            }
            let run = state.runs.get(&id)?;
            let (ctx, failures) = Authority::build(&state, &run).await;
            let ctx = Arc::new(ctx);
            if failures.is_empty() {
                self.contexts().insert(
                    run.id.clone(),
                    CachedContext {
                        at: std::time::Instant::now(),
                        vault,
                        context: ctx.clone(),
                    },
                );
            }
            Some(ctx)
        })
    }

    fn credential_rejected(&self, run_id: &str, grants: &[String]) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let frozen = self.frozen_map().get(run_id).cloned();
        let resolver = state.resolver();
        for name in grants {
            if let Some(grant) = frozen.as_ref().and_then(|f| f.grants.get(name)) {
                resolver.forget(&grant.secret);
            }
        }
        self.contexts().remove(run_id);
        tracing::info!(
            run = run_id,
            grants = grants.join(","),
            "upstream answered 401: the grants' secrets are resolved again on the next request"
        );
    }
}

/// Removes runs whose process exited, revoking their tokens.
pub(crate) fn reap(state: &AppState) {
    match state.runs.reap() {
        Ok(ended) => {
            for id in ended {
                state.authority.forget(&id);
                state.brokers.end(&id);
                tracing::info!(
                    run = id,
                    "run ended: its process exited; its token is revoked"
                );
                state.evidence.record(
                    Kind::Run,
                    Some(id.clone()),
                    json!({"event": "run_ended", "why": "process exited"}),
                );
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
}

/// Reaps as soon as `pid` exits, woken by a pidfd; without pidfd the
/// periodic check in the lifecycle loop does it.
pub(crate) fn watch_exit(state: &Arc<AppState>, pid: u32) {
    let fd = match keyward_sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(pid, "no pidfd ({e}); run liveness falls back to polling");
            return;
        }
    };
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        if let Err(e) = keyward_sys::pidfd_exited(fd).await {
            tracing::debug!(
                pid,
                "pidfd wait failed ({e}); liveness falls back to polling"
            );
            return;
        }
        if let Some(state) = state.upgrade() {
            reap(&state);
        }
    });
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
    if let Some(path) = &req.policy {
        if !std::path::Path::new(path).is_absolute() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_policy",
                format!("policy: {path:?} must be an absolute path"),
            ));
        }
        Policy::from_file(std::path::Path::new(path))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_policy", e.to_string()))?;
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunCreated>, ApiError> {
    let req: CreateRunRequest = json_body(body)?;
    let vars = check_grants(&state, &req)?;
    let runner = RunnerAuth::check(&state, &req.runner_auth, None).await;
    if let Some(failure) = &runner.failure {
        return Err(runner_auth::refuse_run(failure));
    }
    let claims = runner.verified.map(|v| v.claims);
    runner_auth::check_grant_requirements(&state.config().grants, &req.grants, claims.as_ref())?;
    let (mut run, token) = state.runs.create(&req, &vars, peer.uid)?;
    if let Some(claims) = claims {
        run = state.runs.bind_runner(&run.id, claims)?.unwrap_or(run);
    }
    // Resolve now so a sealed vault or a missing secret fails here, loudly,
    // not at the child's first request.
    let (ctx, failures) = Authority::build(&state, &run).await;
    if !failures.is_empty() {
        let _ = state.runs.remove(&run.id);
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
    if let Some(pid) = run.pid {
        watch_exit(&state, pid);
    }
    let port = state.proxy_port;
    let proxy_url = format!("http://run:{token}@127.0.0.1:{port}");
    tracing::info!(run = run.id, grants = run.grants.join(","), pid = ?run.pid, "run registered");
    state
        .audit(
            Kind::Run,
            Some(&run.id),
            json!({"event": "run_created", "run": run.info()}),
        )
        .await;
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
        .map(|c| crate::runs::token_hash(c.secret.expose_secret()))
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
) -> Json<RunList> {
    Json(RunList {
        runs: state
            .runs
            .list()
            .iter()
            .filter(|r| visible(&peer, r))
            .map(RunRecord::info)
            .collect(),
    })
}

/// Administrators see every run; other users only their own.
fn visible(peer: &Peer, run: &RunRecord) -> bool {
    peer.admin || run.uid == Some(peer.uid)
}

/// The run `id` as `peer` may see it.
fn visible_run(state: &AppState, peer: &Peer, id: &str) -> Result<RunRecord, ApiError> {
    state
        .runs
        .get(id)
        .filter(|r| visible(peer, r))
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
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    visible_run(&state, &peer, &id).map(|r| Json(r.info()))
}

pub(crate) async fn patch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunInfo>, ApiError> {
    let req: PatchRunRequest = json_body(body)?;
    visible_run(&state, &peer, &id)?;
    let run = state
        .runs
        .set_pid(&id, req.pid)?
        .ok_or_else(|| not_found(&id))?;
    if let Some(pid) = run.pid {
        watch_exit(&state, pid);
    }
    Ok(Json(run.info()))
}

pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let run = visible_run(&state, &peer, &id)?;
    state.runs.remove(&id)?;
    state.authority.forget(&id);
    state.brokers.end(&id);
    tracing::info!(run = id, "run removed");
    state
        .audit(Kind::Run, Some(&id), json!({"event": "run_removed"}))
        .await;
    Ok(Json(run.info()))
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
