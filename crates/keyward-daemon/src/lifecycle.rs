//! The daemon's life: harden, take the home, bind, serve, reload on SIGHUP,
//! drain and clean up on SIGTERM/SIGINT, `/v1/shutdown` or idle exit.
//!
//! [`run`] is a sequence of named steps: [`Daemon::start`] (bind the
//! sockets, [`open_stores`], [`build_proxy`], build the shared state,
//! [`restore_runs`], [`start_proxy`], [`serve_admin`]),
//! [`Daemon::main_loop`] (a select over signals, timers and stop requests)
//! and [`Daemon::shutdown`] (the drain).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use keyward_api::KeyMode;
use keyward_proxy::{CertificateAuthority, Proxy};
use keyward_vault::{KnownValues, Resolver, Vault};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin_listener::{AdminListener, Peer};
use crate::compat_cavra;
use crate::daemon_log;
use crate::egress_evidence::RedactedEvidence;
use crate::error::DaemonError;
use crate::notify::sd_notify;
use crate::pidfile::{PidError, PidLock};
use crate::routes::router;
use crate::routes::vault::open_at_start;
use crate::run_ending;
use crate::socket::{SocketId, bind_socket, remove_socket_if_ours};
use crate::state::{AppState, LogControl, StopReason, build_resolver};
use keyward_config::LoadedConfig;
use keyward_config::home::Home;
use keyward_evidence::{EvidenceLog, Kind, LogOptions};
use keyward_runs::Registry;
use keyward_runs::activity::Activity;
use keyward_runs::authority::{Authority, Live};
use keyward_runs::report::RunReports;
use keyward_runs::tasks::RunTasks;

/// How long in-flight requests may take to finish once a stop begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long gRPC calls under way may take to finish at a stop.
const GRPC_DRAIN: Duration = Duration::from_secs(3);

/// Everything [`run`] needs, resolved and validated by the caller.
pub struct DaemonOptions {
    /// The home to take.
    pub home: Home,
    /// The validated config and where it came from (reloaded on SIGHUP).
    pub config: LoadedConfig,
    /// `--idle-exit` from the command line: overrides the config, also
    /// after reloads. `Some(None)` turns idle exit off.
    pub idle_exit_override: Option<Option<Duration>>,
    /// `--require-runner-auth`: every evaluation needs verified runner
    /// auth, whatever the config says (also after reloads).
    pub require_runner_auth: bool,
    /// Log filter control for reloads.
    pub log: Box<dyn LogControl>,
}

/// Runs the daemon until it is told to stop. Returns once the socket and PID
/// file are removed.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let hardening = keyward_sys::harden_process();
    log_hardening(&hardening);

    // Install handlers before binding so a signal during start-up is a clean
    // stop, not the default death that leaves files behind.
    let mut signals = Signals::install()?;

    let home = &opts.home;
    home.check_socket_path()?;
    home.ensure_private()?;
    let pid_lock = take_pid_file(home)?;
    let mut daemon = match Daemon::start(opts, &hardening).await {
        Ok(daemon) => daemon,
        Err(e) => {
            pid_lock.release();
            return Err(e);
        }
    };
    let reason = daemon.main_loop(&mut signals).await;
    daemon.shutdown(reason).await;
    pid_lock.release();
    tracing::info!("keyward daemon stopped");
    Ok(())
}

/// The signals the daemon acts on.
struct Signals {
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate())
                .map_err(DaemonError::io("cannot install the SIGTERM handler"))?,
            sigint: signal(SignalKind::interrupt())
                .map_err(DaemonError::io("cannot install the SIGINT handler"))?,
            sighup: signal(SignalKind::hangup())
                .map_err(DaemonError::io("cannot install the SIGHUP handler"))?,
        })
    }
}

/// Takes the home's PID file: one daemon per home.
fn take_pid_file(home: &Home) -> Result<PidLock, DaemonError> {
    let (pid_lock, stale_pid) = PidLock::acquire(&home.pid_path()).map_err(|e| match e {
        PidError::Held { pid, .. } => DaemonError::AlreadyRunning {
            pid,
            socket: home.socket_path(),
        },
        PidError::Io { path, source } => DaemonError::Io {
            what: format!("cannot take the PID file {}", path.display()),
            source,
        },
    })?;
    if let Some(stale) = stale_pid {
        tracing::warn!("replaced a stale PID file left by pid {stale}, which is no longer running");
    }
    Ok(pid_lock)
}

/// A started daemon: what its main loop and its shutdown need.
struct Daemon {
    state: Arc<AppState>,
    stop_requests: mpsc::Receiver<StopReason>,
    idle_exit_override: Option<Option<Duration>>,
    proxy: RunningProxy,
    admin: AdminServer,
    /// The gRPC listener for remote callers, when `[server.grpc]` is set.
    grpc: Option<crate::grpc_api::GrpcListener>,
}

impl Daemon {
    /// Binds the sockets, opens the stores, and starts the proxy and the
    /// admin API. On error what was bound is dropped; the caller releases
    /// the PID file.
    async fn start(
        opts: DaemonOptions,
        hardening: &keyward_sys::HardeningReport,
    ) -> Result<Self, DaemonError> {
        let home = &opts.home;
        let sockets = bind_sockets(home, &opts.config)?;
        let stores = open_stores(home, &opts.config)?;
        let proxy_listener = bind_proxy(home, &opts.config.config.proxy.listen).await?;
        let proxy_port = proxy_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default();
        let upstream_ca = opts.config.config.proxy.upstream_ca.clone();
        let open_files = hardening.nofile_limit.as_ref().ok().copied();
        let proxy_options = opts.config.config.proxy.options(DRAIN_TIMEOUT, open_files);

        let (stop_tx, stop_requests) = mpsc::channel(1);
        let activity = Arc::new(Activity::new());
        let config = Arc::new(RwLock::new(Arc::new(opts.config)));
        let resolver = Arc::new(RwLock::new(Arc::new(stores.resolver)));
        let runs = stores.runs;
        let authority = Arc::new(Authority::new(Live {
            runs: runs.clone(),
            activity: activity.clone(),
            config: config.clone(),
            resolver: resolver.clone(),
            vault_values: stores.vault_values,
            policy_store: home.policies_dir(),
        }));
        let cgroups = run_cgroups(home, &runs);
        let run_reports = Arc::new(RunReports::default());
        let sink = RedactedEvidence::new(
            authority.clone(),
            runs.clone(),
            run_reports.clone(),
            stores.evidence.clone(),
        );
        let proxy = build_proxy(
            stores.ca.clone(),
            authority.clone(),
            sink,
            &upstream_ca,
            proxy_options,
        )?;
        let state = Arc::new(AppState {
            started_at: SystemTime::now(),
            started: Instant::now(),
            activity,
            stop: stop_tx,
            vault: stores.vault,
            config,
            resolver,
            log: opts.log,
            runs,
            authority,
            ca: stores.ca,
            proxy_port,
            daemon_uid: keyward_sys::effective_uid(),
            public_bundle: home.public_dir().map(|dir| dir.join("bundle.pem")),
            evidence: stores.evidence,
            baseline: Arc::new(keyward_policy::baseline()),
            proxy,
            brokers: RunTasks::default(),
            exit_watchers: RunTasks::default(),
            require_runner_auth: opts.require_runner_auth,
            home: home.clone(),
            cgroups,
            reload_failed: Mutex::new(None),
            run_reports,
            team: stores.team,
            grpc: std::sync::OnceLock::new(),
        });
        restore_runs(&state).await;
        if let Err(e) = state.publish_bundle() {
            tracing::error!("cannot publish the CA trust bundle for other users: {e}");
        }
        // A gRPC listener that cannot start (address taken, bad TLS files)
        // stops the start: nothing is half-served.
        let grpc_config = state.config().config.server.grpc.clone();
        let grpc = match grpc_config {
            Some(grpc_config) => Some(crate::grpc_api::start(&state, &grpc_config).await?),
            None => None,
        };
        let proxy = start_proxy(&state.proxy, proxy_listener)?;
        let admin = serve_admin(&state, sockets);

        for run in state.runs.list() {
            if let Some(pid) = run.pid {
                run_ending::watch_exit(&state, &run.id, pid);
            }
        }
        state.evidence.record(
            Kind::Admin,
            None,
            serde_json::json!({
                "event": "daemon_started",
                "pid": std::process::id(),
                "version": keyward_api::VERSION,
                "policy_id": state.config().policy.id(),
            }),
        );
        notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        tracing::info!(
            pid = std::process::id(),
            socket = %admin.socket_path.display(),
            proxy = %format!("127.0.0.1:{proxy_port}"),
            runs = state.runs.len(),
            version = keyward_api::VERSION,
            commit = keyward_api::COMMIT,
            "keyward daemon ready"
        );
        Ok(Self {
            state,
            stop_requests,
            idle_exit_override: opts.idle_exit_override,
            proxy,
            admin,
            grpc,
        })
    }

    /// Serves until a signal, a `/v1/shutdown` or idle exit says stop;
    /// returns why. Reloads on SIGHUP; seals an idle vault, reaps ended runs
    /// and rotates the daemon's log on their timers.
    async fn main_loop(&mut self, signals: &mut Signals) -> String {
        let state = &self.state;
        let mut reap_check = tokio::time::interval(REAP_PERIOD);
        reap_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seal_check = tokio::time::interval(SEAL_CHECK_PERIOD);
        seal_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log_rotation = daemon_log::Rotation::new(state.home.log_path());
        loop {
            let current = state.config();
            let idle_exit = self
                .idle_exit_override
                .unwrap_or(current.config.daemon.idle_exit);
            tokio::select! {
                _ = signals.sigterm.recv() => break "SIGTERM".to_owned(),
                _ = signals.sigint.recv() => break "SIGINT".to_owned(),
                _ = signals.sighup.recv() => reload(state),
                _ = seal_check.tick() => seal_if_idle(&state.vault, current.config.vault.idle_seal),
                _ = reap_check.tick() => {
                    log_rotation.check(current.config.daemon.log_max_bytes);
                    run_ending::reap(state);
                    crate::run_trust::sweep(state);
                    // Live runs keep the daemon from idling out.
                    if !state.runs.is_empty() {
                        state.activity.touch();
                    }
                }
                Some(StopReason::Api(why)) = self.stop_requests.recv() => {
                    break format!("shutdown requested over the admin API{}",
                        why.map(|w| format!(" ({w})")).unwrap_or_default());
                }
                () = idle_elapsed(idle_exit, &state.activity) => {
                    break format!("idle for {}", keyward_config::format_duration_or_off(idle_exit));
                }
            }
        }
    }

    /// Stops accepting, drains the admin API and the proxy (at most
    /// [`DRAIN_TIMEOUT`]), records the stop and releases the runs' cgroups.
    async fn shutdown(self, reason: String) {
        let Self {
            state,
            proxy,
            mut admin,
            grpc,
            ..
        } = self;
        tracing::info!("stopping: {reason}");
        // `keyward run --verbose` followers are answered now, not after
        // their long poll runs out.
        state.run_reports.close();
        let _ = proxy.stop.send(());
        notify("STOPPING=1");
        // New clients get "not running" at once instead of queueing on a
        // listener that no longer accepts.
        remove_socket_if_ours(&admin.socket_path, admin.socket_id, "the admin socket");
        if let Some(cavra) = admin.cavra {
            cavra.stop();
        }
        let _ = admin.drain.send(());
        // The proxy and the gRPC listener drain at the same time (the proxy
        // stops itself after DRAIN_TIMEOUT; gRPC calls are short, and the
        // streams a load balancer keeps open are cut after GRPC_DRAIN).
        let grpc_stopped = async {
            if let Some(grpc) = grpc {
                grpc.stop(GRPC_DRAIN).await;
            }
        };
        let (drained, _, ()) = tokio::join!(
            tokio::time::timeout(DRAIN_TIMEOUT, &mut admin.serve),
            proxy.task,
            grpc_stopped
        );
        // After the last call that could use a token.
        state.team.flush();
        match drained {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!("admin server failed while draining: {e}"),
            Ok(Err(e)) => tracing::error!("admin server task failed: {e}"),
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within {}s; closing them",
                    DRAIN_TIMEOUT.as_secs()
                );
                admin.serve.abort();
            }
        }
        // Every record queued before this one is written first.
        if let Err(e) = state
            .evidence
            .append(
                Kind::Admin,
                None,
                serde_json::json!({"event": "daemon_stopped", "reason": reason}),
            )
            .await
        {
            tracing::error!("evidence log: {e}");
        }
        if let Some(cgroups) = &state.cgroups {
            cgroups.release();
        }
    }
}

/// The admin socket (and the CAVRA socket, if configured), bound but not
/// yet served.
struct BoundSockets {
    admin: UnixListener,
    admin_path: PathBuf,
    admin_id: SocketId,
    cavra: Option<compat_cavra::Bound>,
}

/// Binds the admin socket and the CAVRA socket. If the second cannot be
/// bound, the first is removed again.
fn bind_sockets(home: &Home, config: &LoadedConfig) -> Result<BoundSockets, DaemonError> {
    let socket_path = home.socket_path();
    // Other users named in [admin] must be able to connect; the peer check
    // (SO_PEERCRED) decides who is served.
    let socket_mode = if config.config.admin.serves_others() {
        0o666
    } else {
        0o600
    };
    let (admin, admin_id) = bind_socket(&socket_path, socket_mode, "the admin socket")?;
    let cavra = match compat_cavra::bind(config, &socket_path, socket_mode) {
        Ok(cavra) => cavra,
        Err(e) => {
            remove_socket_if_ours(&socket_path, admin_id, "the admin socket");
            return Err(e);
        }
    };
    Ok(BoundSockets {
        admin,
        admin_path: socket_path,
        admin_id,
        cavra,
    })
}

/// What the daemon keeps on disk, opened: the vault (and a resolver over
/// it), the local CA, the runs and the evidence log.
struct Stores {
    vault: Arc<Mutex<Vault>>,
    /// The vault's secret values as opened at start, for redaction.
    vault_values: KnownValues,
    resolver: Resolver,
    ca: Arc<CertificateAuthority>,
    runs: Arc<Registry>,
    evidence: Arc<EvidenceLog>,
    /// The team's tokens and roles: files this version cannot read stop
    /// the start rather than leave tokens unchecked.
    team: crate::team_auth::TeamAuth,
}

fn open_stores(home: &Home, config: &LoadedConfig) -> Result<Stores, DaemonError> {
    let mut vault = Vault::new(home.vault_dir(), config.config.vault.keep).guard_home(home.root());
    open_at_start(&mut vault);
    let vault_values = vault.known_values();
    let vault = Arc::new(Mutex::new(vault));
    let resolver = build_resolver(&config.config, vault.clone());
    let ca = CertificateAuthority::load_or_create(&home.ca_dir()).map_err(|e| DaemonError::Io {
        what: format!("cannot set up the local CA in {}", home.ca_dir().display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    let runs = Registry::load(&home.runs_path()).map_err(|e| DaemonError::Io {
        what: "cannot restore runs".to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let evidence = open_evidence(home, &config.config.audit)?;
    let team = crate::team_auth::TeamAuth::open(&home.auth_dir())?;
    Ok(Stores {
        vault,
        vault_values,
        resolver,
        ca: Arc::new(ca),
        runs: Arc::new(runs),
        evidence: Arc::new(evidence),
        team,
    })
}

/// The runs' cgroups, where the kernel lets the daemon make them.
fn run_cgroups(home: &Home, runs: &Registry) -> Option<Arc<keyward_runs::cgroup::RunCgroups>> {
    match keyward_runs::cgroup::RunCgroups::detect(home.root()) {
        Ok(cgroups) => {
            tracing::info!(
                "each run gets a cgroup of its own: its processes stay in it whatever happens to its `keyward run`"
            );
            let cgroups = Arc::new(cgroups);
            runs.use_cgroups(cgroups.clone());
            Some(cgroups)
        }
        Err(why) => {
            tracing::warn!(
                "runs are tracked by process ancestry only (no cgroup per run: {why}); \
                 a run's leftovers are ended by its `keyward run`, not by the daemon"
            );
            None
        }
    }
}

/// Restored runs: each record checked against its seal (or left waiting
/// for the vault's unseal), those whose process is gone ended, and the
/// processes of runs that no longer exist ended.
async fn restore_runs(state: &Arc<AppState>) {
    crate::run_trust::settle(state).await;
    run_ending::reap(state);
    crate::run_trust::sweep(state);
    keyward_runs::frozen::prune(&state.home.policies_dir(), &state.runs.list());
}

/// The proxy, serving on its own worker threads until told to stop.
struct RunningProxy {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Builds the proxy, its egress records redacted on their way to the
/// evidence log by `sink`.
fn build_proxy(
    ca: Arc<CertificateAuthority>,
    authority: Arc<Authority>,
    sink: RedactedEvidence,
    upstream_ca: &[PathBuf],
    options: keyward_proxy::ProxyOptions,
) -> Result<Arc<Proxy>, DaemonError> {
    let proxy =
        Proxy::with_options(ca, authority, upstream_ca, options).map_err(|e| DaemonError::Io {
            what: "cannot start the proxy".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(Arc::new(proxy.with_sink(Arc::new(sink))))
}

/// Serves `listener` with the proxy.
fn start_proxy(proxy: &Arc<Proxy>, listener: TcpListener) -> Result<RunningProxy, DaemonError> {
    let (stop, stopped) = oneshot::channel::<()>();
    // One worker thread per core serves the proxy's clients; broker streams
    // and the admin API stay on this runtime.
    let workers = listener.into_std().and_then(|listener| {
        proxy.clone().serve_per_core(listener, async {
            let _ = stopped.await;
        })
    });
    let task = match workers {
        Ok(workers) => tokio::spawn(workers),
        Err(e) => {
            return Err(DaemonError::Io {
                what: "cannot start the proxy's workers".to_owned(),
                source: e,
            });
        }
    };
    Ok(RunningProxy { stop, task })
}

/// The admin API (and the CAVRA socket) being served.
struct AdminServer {
    socket_path: PathBuf,
    socket_id: SocketId,
    serve: JoinHandle<io::Result<()>>,
    /// Sent to stop accepting and let in-flight requests finish.
    drain: oneshot::Sender<()>,
    cavra: Option<compat_cavra::Serving>,
}

fn serve_admin(state: &Arc<AppState>, sockets: BoundSockets) -> AdminServer {
    let app = router(state.clone()).into_make_service_with_connect_info::<Peer>();
    let (drain, drained) = oneshot::channel::<()>();
    let listener = AdminListener::new(sockets.admin, state.daemon_uid, state);
    let cavra = sockets.cavra.map(|bound| compat_cavra::serve(bound, state));
    let serve = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = drained.await;
            })
            .into_future(),
    );
    AdminServer {
        socket_path: sockets.admin_path,
        socket_id: sockets.admin_id,
        serve,
        drain,
        cavra,
    }
}

/// How often runs are checked for exited processes: the fallback for
/// kernels without pidfd (each run with a pid is watched by a pidfd).
const REAP_PERIOD: Duration = Duration::from_secs(1);

/// Binds the proxy. With port 0, the port picked on first start is
/// persisted and bound again, so children keep a working proxy URL across
/// restarts; if it is taken, a new one is picked (with a warning).
async fn bind_proxy(home: &Home, listen: &str) -> Result<tokio::net::TcpListener, DaemonError> {
    let mut addr: std::net::SocketAddr = listen.parse().map_err(|e| DaemonError::Io {
        what: format!("proxy.listen {listen:?}"),
        source: std::io::Error::other(format!("{e}")),
    })?;
    let port_file = home.proxy_port_path();
    let remembered = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|t| t.trim().parse::<u16>().ok());
    if addr.port() == 0
        && let Some(port) = remembered
    {
        let mut again = addr;
        again.set_port(port);
        match tokio::net::TcpListener::bind(again).await {
            Ok(l) => return Ok(l),
            Err(e) => tracing::warn!(
                "cannot bind the proxy to its previous port {port} ({e}); picking a new one: running children must restart"
            ),
        }
    }
    if addr.port() == 0 {
        addr.set_port(0);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(DaemonError::io(format!("cannot bind the proxy to {addr}")))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    if let Err(e) = keyward_vault::write_atomic(&port_file, format!("{port}\n").as_bytes()) {
        tracing::warn!("cannot remember the proxy port: {e}");
    }
    Ok(listener)
}

/// Opens the evidence log in `<home>/audit`, repairing a torn last record.
/// The signing key is read once here: `[audit]` changes take effect at the
/// next start.
fn open_evidence(
    home: &Home,
    audit: &keyward_config::AuditConfig,
) -> Result<EvidenceLog, DaemonError> {
    let signer = audit.signer().map_err(|(key, message)| DaemonError::Io {
        what: format!("cannot load the evidence signing key ({key})"),
        source: std::io::Error::other(message),
    })?;
    if std::env::var_os(keyward_evidence::HMAC_KEY_ENV).is_some_and(|v| !v.is_empty()) {
        let ignored = [
            ("audit.hmac_key_file", &audit.hmac_key_file),
            ("audit.ed25519_key_file", &audit.ed25519_key_file),
        ];
        for (key, file) in ignored {
            if let Some(file) = file {
                tracing::warn!(
                    "{key} ({}) is not used: the key in {} wins",
                    file.display(),
                    keyward_evidence::HMAC_KEY_ENV
                );
            }
        }
        tracing::info!(
            "evidence records are signed with the HMAC key from {}",
            keyward_evidence::HMAC_KEY_ENV
        );
    }
    if signer.is_none() {
        tracing::info!(
            "evidence records are hash-chained but unsigned; set audit.ed25519_key_file \
             (see `keyward audit keygen`) so a verifier can check who wrote them"
        );
    }
    let (log, _repair) = EvidenceLog::open(LogOptions {
        dir: home.audit_dir(),
        signer,
        segment_bytes: audit.segment_bytes,
    })
    .map_err(|e| DaemonError::Io {
        what: "cannot open the evidence log".to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(log)
}

/// How often the idle auto-seal is checked.
const SEAL_CHECK_PERIOD: Duration = Duration::from_millis(500);

fn lock(vault: &Mutex<Vault>) -> std::sync::MutexGuard<'_, Vault> {
    vault
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seals a passphrase vault left unused for `idle`. A key-file vault is not
/// auto-sealed: its key sits on disk beside it, so sealing would protect
/// nothing.
fn seal_if_idle(vault: &Mutex<Vault>, idle: Option<Duration>) {
    let Some(idle) = idle else { return };
    let mut vault = lock(vault);
    if matches!(vault.mode(), Ok(Some(KeyMode::Passphrase))) && vault.seal_if_idle(idle) {
        tracing::info!(
            "vault sealed after {} unused (vault.idle_seal)",
            keyward_config::format_duration_or_off(Some(idle))
        );
    }
}

fn reload(state: &AppState) {
    notify("RELOADING=1");
    match state.reload() {
        Ok((new, restart_needed)) => {
            tracing::info!(
                config = %new.source.path.display(),
                from_file = new.from_file,
                policy = new.policy.id(),
                "config reloaded"
            );
            if !restart_needed.is_empty() {
                tracing::warn!(
                    "changed settings that apply only after a restart: {}",
                    restart_needed.join(", ")
                );
            }
            state.evidence.record(
                Kind::Admin,
                None,
                serde_json::json!({"event": "config_reloaded", "policy_id": new.policy.id()}),
            );
        }
        Err(e) => {
            tracing::error!("config reload failed, keeping the previous config: {e}");
            state.evidence.record(
                Kind::Admin,
                None,
                serde_json::json!({"event": "config_reload_failed", "error": e.to_string()}),
            );
        }
    }
    notify("READY=1");
}

/// Completes once the daemon has been idle for `limit`; never when `None`.
async fn idle_elapsed(limit: Option<Duration>, activity: &Activity) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        match activity.idle_since() {
            Some(since) if since.elapsed() >= limit => return,
            Some(since) => tokio::time::sleep_until((since + limit).into()).await,
            None => tokio::time::sleep(limit.min(Duration::from_secs(1))).await,
        }
    }
}

fn notify(state: &str) {
    if let Err(e) = sd_notify(state) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

fn log_hardening(report: &keyward_sys::HardeningReport) {
    if let Err(e) = &report.non_dumpable {
        tracing::warn!("cannot mark the process non-dumpable (PR_SET_DUMPABLE): {e}");
    }
    if let Err(e) = &report.core_limit_zero {
        tracing::warn!("cannot disable core files (RLIMIT_CORE): {e}");
    }
    match &report.nofile_limit {
        Ok(n) => tracing::debug!("open-file limit raised to {n}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit (RLIMIT_NOFILE): {e}"),
    }
    match &report.mlock {
        keyward_sys::MlockOutcome::Locked => tracing::debug!("memory locked against swapping"),
        keyward_sys::MlockOutcome::SkippedLimit(limit) => tracing::info!(
            "memory not locked: RLIMIT_MEMLOCK is {limit} bytes; raise it (systemd: LimitMEMLOCK=infinity) to keep secrets out of swap"
        ),
        keyward_sys::MlockOutcome::Failed(e) => {
            tracing::info!("memory not locked against swapping (mlockall): {e}")
        }
    }
}
