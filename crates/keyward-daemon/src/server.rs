//! The admin API: HTTP/1.1 JSON on the Unix socket, every connection checked
//! by peer credentials before a byte of it is read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use hyper::body::Bytes;
use keyward_api::{ErrorBody, ErrorDetail, Health, ShutdownRequest, ShutdownResponse};
use keyward_vault::{OpenBao, Resolver, ResolverOptions, Vault};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::admin_conn::{AdminConn, ConnectionBudget, FdInbox};
use crate::authority::Authority;
use crate::config::{self, Config, ConfigError, LoadedConfig};
use crate::lifecycle::LogControl;
use crate::run_routes;
use crate::runs::{Membership, Registry};
use crate::{auth_routes, grant_routes, policy_routes, vault_routes};
use keyward_evidence::{EvidenceLog, Kind};
use keyward_proxy::CertificateAuthority;

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

/// The process on the other end of an admin connection (`SO_PEERCRED`),
/// with a pidfd for it where the kernel offers one (`SO_PEERPIDFD`).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    pub pidfd: Option<Arc<std::os::fd::OwnedFd>>,
    /// The daemon's own user, root, or a uid in `admin.admin_uids`: may
    /// manage secrets, the vault, grants, the CA and the daemon, and sees
    /// every run. Others admitted by `[admin]` only use runs.
    pub admin: bool,
    /// A descriptor the peer sent on this connection (`SCM_RIGHTS`).
    pub inbox: FdInbox,
}

impl Peer {
    /// Whether this peer is inside a run (or cannot be told apart from one).
    pub(crate) fn membership(&self, runs: &Registry) -> Membership {
        runs.membership(
            self.pid.and_then(|p| u32::try_from(p).ok()),
            self.pidfd.as_deref(),
        )
    }
}

/// Accepts admin connections, refusing every peer that is not the daemon's
/// user, root, or a user the config's `[admin]` table names.
pub(crate) struct AdminListener {
    inner: UnixListener,
    daemon_uid: u32,
    state: std::sync::Weak<AppState>,
    budget: ConnectionBudget,
    /// When a full pool was last logged (once a second at most).
    full_logged: Option<Instant>,
}

impl AdminListener {
    pub(crate) fn new(inner: UnixListener, daemon_uid: u32, state: &Arc<AppState>) -> Self {
        Self {
            inner,
            daemon_uid,
            state: Arc::downgrade(state),
            budget: ConnectionBudget::new(state.config().config.admin.max_connections),
            full_logged: None,
        }
    }

    fn admit(&self, stream: &UnixStream) -> Result<Peer, String> {
        admit(stream, self.daemon_uid, &self.state)
    }
}

/// Checks the peer of a connection to one of the daemon's sockets: its
/// user, root and the users `[admin]` names are admitted (the last only
/// while the daemon's state exists).
pub(crate) fn admit(
    stream: &UnixStream,
    daemon_uid: u32,
    state: &std::sync::Weak<AppState>,
) -> Result<Peer, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let mut peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
        pidfd: keyward_sys::peer_pidfd(stream).map(Arc::new),
        admin: true,
        inbox: FdInbox::default(),
    };
    if peer.uid == daemon_uid || peer.uid == 0 {
        return Ok(peer);
    }
    let refused = || {
        format!(
            "uid {} (pid {}) is not the daemon's uid {}, root, or a user in [admin]",
            peer.uid,
            peer.pid.map_or("?".to_owned(), |p| p.to_string()),
            daemon_uid
        )
    };
    let Some(state) = state.upgrade() else {
        return Err(refused());
    };
    let admin = &state.config().config.admin;
    peer.admin = admin.admin_uids.contains(&peer.uid);
    let in_group = || {
        let gids = admin.allowed_gids().unwrap_or_default();
        !gids.is_empty()
            && (gids.contains(&cred.gid())
                || peer
                    .pid
                    .is_some_and(|pid| peer_groups(pid).iter().any(|g| gids.contains(g))))
    };
    if peer.admin || admin.allow_uids.contains(&peer.uid) || in_group() {
        Ok(peer)
    } else {
        Err(refused())
    }
}

/// The supplementary groups of a process (`/proc/<pid>/status`); none when
/// it cannot be read.
fn peer_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

impl Listener for AdminListener {
    type Io = AdminConn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let stream = match self.inner.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!("admin socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(&stream) {
                Ok(peer) => {
                    let confined = self.state.upgrade().is_none_or(|state| {
                        match peer.membership(&state.runs) {
                            Membership::Outside => false,
                            // The run's own `keyward run` (the run's pid) is
                            // its owner's tool, not the program: it draws
                            // from the owner's pool, so programs filling the
                            // runs' share cannot stop a wrapper from
                            // following or ending its run.
                            Membership::Inside(run) => {
                                state.runs.get(&run).and_then(|r| r.pid).map(i64::from)
                                    != peer.pid.map(i64::from)
                            }
                            Membership::Unknown(_) => true,
                        }
                    });
                    if let Some(slot) = self.budget.take(confined) {
                        return (AdminConn::new(stream, slot, peer.inbox.clone()), peer);
                    }
                    if self
                        .full_logged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        self.full_logged = Some(Instant::now());
                        tracing::warn!(
                            confined,
                            "admin connections are at their cap (admin.max_connections{}); \
                             refusing new ones until some close",
                            if confined {
                                ", the share of processes inside runs"
                            } else {
                                ""
                            }
                        );
                    }
                }
                Err(why) => {
                    tracing::warn!("refused admin connection: {why}");
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            uid: self.daemon_uid,
            pid: None,
            pidfd: None,
            admin: true,
            inbox: FdInbox::default(),
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, AdminListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Answers a refused peer with a canned 403 so its client shows a clear
/// error rather than a reset. The request head is read (bounded in size and
/// time) and discarded unparsed: closing with it unread would make the
/// kernel reset the connection and lose the answer.
async fn refuse(mut stream: UnixStream) {
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code: "peer_refused".to_owned(),
            message: "this keyward daemon accepts admin connections only from its own user, \
                      root and the users its config names in [admin]"
                .to_owned(),
        },
    })
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Tracks admin-API activity for idle exit.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    last_nanos: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_nanos: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// When the daemon last became idle, or `None` while a request is in
    /// flight.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed)))
    }
}

/// Why the daemon is stopping.
#[derive(Debug)]
pub(crate) enum StopReason {
    Api(Option<String>),
}

pub(crate) struct AppState {
    pub started_at: SystemTime,
    pub started: Instant,
    pub activity: Arc<Activity>,
    pub stop: mpsc::Sender<StopReason>,
    pub vault: Arc<Mutex<Vault>>,
    pub config: Arc<RwLock<Arc<LoadedConfig>>>,
    pub resolver: Arc<RwLock<Arc<Resolver>>>,
    pub log: Box<dyn LogControl>,
    pub runs: Arc<Registry>,
    pub authority: Arc<Authority>,
    pub ca: Arc<CertificateAuthority>,
    pub proxy_port: u16,
    /// The uid the daemon runs as.
    pub daemon_uid: u32,
    /// A world-readable copy of the CA trust bundle beside a socket that
    /// lives outside the home, for clients that cannot read the home.
    pub public_bundle: Option<std::path::PathBuf>,
    pub evidence: Arc<EvidenceLog>,
    /// The built-in pack, compiled once (for `policy_pack: "agent-baseline"`).
    pub baseline: Arc<keyward_policy::Policy>,
    /// The proxy, once it is built (weak: the proxy's evidence sink holds
    /// this state).
    pub proxy: std::sync::OnceLock<std::sync::Weak<keyward_proxy::Proxy>>,
    /// The runs' fd brokers: ending one closes its end (the program's
    /// next dial sees EOF); streams already minted end with their run's
    /// next request, which no longer authenticates.
    pub brokers: crate::run_tasks::RunTasks,
    /// The watchers of the runs' processes (each holds a pidfd).
    pub exit_watchers: crate::run_tasks::RunTasks,
    /// `daemon start --require-runner-auth`: as `auth.require_runner_auth`,
    /// whatever the config (also after reloads).
    pub require_runner_auth: bool,
    /// The home.
    pub home: crate::home::Home,
    /// The runs' cgroups, where the kernel lets the daemon make them.
    pub cgroups: Option<Arc<crate::run_cgroup::RunCgroups>>,
    /// The last reload failed: when and why (`keyward status` shows it).
    pub reload_failed: Mutex<Option<keyward_api::ReloadFailure>>,
    /// What did not go as each run's program asked, for its `keyward run`.
    pub run_reports: crate::run_report::RunReports,
    /// The team's API tokens and roles (requests with a bearer token).
    pub team: crate::team_auth::TeamAuth,
    /// Where the gRPC API listens, once it does.
    pub grpc: std::sync::OnceLock<keyward_api::GrpcListening>,
}

impl AppState {
    /// The trust bundle children are pointed at.
    pub(crate) fn bundle_path(&self) -> std::path::PathBuf {
        self.public_bundle
            .clone()
            .unwrap_or_else(|| self.ca.bundle_path())
    }

    /// Copies the CA trust bundle to where clients outside the home read
    /// it (0644), when the socket lives outside the home.
    pub(crate) fn publish_bundle(&self) -> std::io::Result<()> {
        let Some(public) = &self.public_bundle else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        let bytes = std::fs::read(self.ca.bundle_path())?;
        keyward_vault::write_atomic(public, &bytes).map_err(std::io::Error::other)?;
        std::fs::set_permissions(public, std::fs::Permissions::from_mode(0o644))
    }

    /// The current config.
    pub(crate) fn config(&self) -> Arc<LoadedConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An evidence payload: the request and the response, with secrets,
    /// bearer tokens and run tokens redacted.
    pub(crate) fn evidence_data(
        &self,
        request: &impl serde::Serialize,
        response: &impl serde::Serialize,
    ) -> serde_json::Value {
        let mut data = serde_json::json!({
            "request": serde_json::to_value(request).unwrap_or_default(),
            "response": serde_json::to_value(response).unwrap_or_default(),
        });
        self.redact(&mut data);
        data
    }

    /// Records an administrative event and waits for it to be on disk. The
    /// action has already happened, so a failure is logged, not returned.
    pub(crate) async fn audit(
        &self,
        kind: Kind,
        run_id: Option<&str>,
        mut data: serde_json::Value,
    ) {
        self.redact(&mut data);
        if let Err(e) = self
            .evidence
            .append(kind, run_id.map(str::to_owned), data)
            .await
        {
            tracing::error!("evidence log: {e}");
        }
    }

    /// Redacts `value` for the evidence log: the secret values the daemon
    /// knows (the open vault's and those live runs resolved from any
    /// backend) wherever they appear, sensitive member names, well-known
    /// token formats, and run tokens.
    pub(crate) fn redact(&self, value: &mut serde_json::Value) {
        self.authority.known_secrets().redact(value);
        let runs = &self.runs;
        keyward_evidence::redact(value, &|s| {
            s.len() == 64
                && s.bytes().all(|b| b.is_ascii_hexdigit())
                // Upper-cased too: the registry hashes the token as issued.
                && runs.id_for_token(&s.to_ascii_lowercase()).is_some()
        });
    }

    /// The current resolver.
    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        self.resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the config from its source; on error nothing changes (and
    /// the failure is kept for `keyward status` until a reload succeeds).
    /// A new resolver replaces the old one, dropping its cache; the proxy
    /// trusts the new `proxy.upstream_ca`. Returns the new config and the
    /// settings that changed but apply only at the next start.
    pub(crate) fn reload(&self) -> Result<(Arc<LoadedConfig>, Vec<String>), ConfigError> {
        let result = self.reload_config();
        *self.reload_failed.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(|e| keyward_api::ReloadFailure {
                at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                error: e.to_string(),
            });
        result
    }

    fn reload_config(&self) -> Result<(Arc<LoadedConfig>, Vec<String>), ConfigError> {
        let old = self.config();
        let source = old.source.clone();
        let new = Arc::new(config::load(&source)?);
        let restart_needed = config::changes_needing_restart(&old.config, &new.config);
        if new.config.proxy.upstream_ca != old.config.proxy.upstream_ca
            && let Some(proxy) = self.proxy.get().and_then(std::sync::Weak::upgrade)
        {
            proxy
                .set_upstream_ca(&new.config.proxy.upstream_ca)
                .map_err(|e| ConfigError::Invalid {
                    path: source.path.clone(),
                    key: Some("proxy.upstream_ca".to_owned()),
                    message: e.to_string(),
                })?;
        }
        if let Err(e) = self.log.set_filter(&new.config.daemon.log_level) {
            tracing::warn!("cannot apply daemon.log_level: {e}");
        }
        self.vault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_keep(new.config.vault.keep);
        let resolver = Arc::new(build_resolver(&new.config, self.vault.clone()));
        *self.resolver.write().unwrap_or_else(|p| p.into_inner()) = resolver;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        // Grants may have changed: runs re-resolve on their next request,
        // each narrowed by the new config, never widened.
        self.authority.forget_credentials();
        Ok((new, restart_needed))
    }
}

/// A resolver for `config`'s backends over the daemon's vault.
pub(crate) fn build_resolver(config: &Config, vault: Arc<Mutex<Vault>>) -> Resolver {
    let openbao = config.backends.openbao.as_ref().and_then(|bao| {
        // Validated at load; a failure here (e.g. the token file vanished
        // since) disables the backend with a clear log line.
        match bao.settings().map_err(|(_, e)| e).and_then(OpenBao::new) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::error!("OpenBao backend disabled: {e}");
                None
            }
        }
    });
    let options = ResolverOptions {
        cache_ttl: config.backends.cache_ttl.unwrap_or_default(),
        cmd_timeout: config
            .backends
            .cmd_timeout
            .unwrap_or(Duration::from_secs(10)),
    };
    Resolver::new(vault, openbao, options)
}

/// An error answer: `{"error":{"code","message"}}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// The message, for logs.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The error code (`bad_request`, ...).
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Decodes a JSON request body; an empty body is `T::default()`. Unknown
/// fields are ignored (the API is additive); malformed JSON is a 400 that
/// says where and why.
pub(crate) fn json_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed JSON in the request body: {e}"),
        )
    })
}

/// A request body's bytes, or the error that says why it could not be read
/// (too large: 413 `payload_too_large`).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "bad_request"
            },
            format!("cannot read the request body: {}", rejection.body_text()),
        )
    })
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/reload", post(grant_routes::reload))
        .route("/v1/grants", get(grant_routes::list))
        .route("/v1/evaluate", post(policy_routes::evaluate))
        .route("/v1/runs", post(run_routes::create).get(run_routes::list))
        .route("/v1/ca/rotate", post(run_routes::rotate_ca))
        .route("/v1/runs/{id}/broker", post(crate::broker::attach))
        .route("/v1/runs/{id}/problems", get(run_routes::problems))
        .route(
            "/v1/runs/{id}",
            get(run_routes::get_one)
                .patch(run_routes::patch)
                .delete(run_routes::remove),
        )
        .route("/v1/vault", get(vault_routes::status))
        .route("/v1/vault/init", post(vault_routes::init))
        .route("/v1/vault/unseal", post(vault_routes::unseal))
        .route("/v1/vault/seal", post(vault_routes::seal))
        .route("/v1/vault/history", get(vault_routes::history))
        .route("/v1/vault/rollback", post(vault_routes::rollback))
        .route("/v1/secrets", get(vault_routes::list))
        .route(
            "/v1/tokens",
            get(auth_routes::list_tokens).post(auth_routes::issue_token),
        )
        .route(
            "/v1/tokens/rotate-all",
            post(auth_routes::rotate_all_tokens),
        )
        .route("/v1/tokens/{user}", delete(auth_routes::revoke_token))
        .route("/v1/tokens/{user}/rotate", post(auth_routes::rotate_token))
        .route(
            "/v1/roles",
            get(auth_routes::list_roles).post(auth_routes::create_role),
        )
        .route(
            "/v1/roles/{name}",
            patch(auth_routes::update_role).delete(auth_routes::delete_role),
        )
        .route(
            "/v1/secrets/{name}",
            put(vault_routes::set).delete(vault_routes::remove),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts requests in flight for idle exit and logs each at debug level
/// with the peer, so a refused or odd caller can be traced.
async fn track(
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
    activity.in_flight.fetch_add(1, Ordering::AcqRel);
    activity.touch();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    activity.touch();
    activity.in_flight.fetch_sub(1, Ordering::AcqRel);
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

async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(state.health())
}

impl AppState {
    /// What `GET /v1/health` answers.
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

async fn shutdown(
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

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no admin API route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}
