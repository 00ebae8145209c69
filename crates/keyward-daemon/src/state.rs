//! The daemon's shared state ([`AppState`]): what every route, the proxy's
//! run authority and the main loop see, how a reload swaps the config, and
//! how evidence records are redacted.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use keyward_evidence::{EvidenceLog, Kind};
use keyward_proxy::{CertificateAuthority, Proxy};
use keyward_vault::{OpenBao, Resolver, ResolverOptions, Vault};
use tokio::sync::mpsc;

use crate::redaction;
use keyward_config::{Config, ConfigError, LoadedConfig};
use keyward_runs::Registry;
use keyward_runs::activity::Activity;
use keyward_runs::authority::Authority;

/// Lets the daemon change the log filter on reload without owning the
/// subscriber, which the binary sets up.
pub trait LogControl: Send + Sync {
    /// Applies a new filter directive, e.g. from `daemon.log_level`.
    fn set_filter(&self, directive: &str) -> Result<(), String>;
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
    /// The proxy (its evidence sink holds only what redaction needs, not
    /// this state, so there is no cycle).
    pub proxy: Arc<Proxy>,
    /// The runs' fd brokers: ending one closes its end (the program's
    /// next dial sees EOF); streams already minted end with their run's
    /// next request, which no longer authenticates.
    pub brokers: keyward_runs::tasks::RunTasks,
    /// The watchers of the runs' processes (each holds a pidfd).
    pub exit_watchers: keyward_runs::tasks::RunTasks,
    /// `daemon start --require-runner-auth`: as `auth.require_runner_auth`,
    /// whatever the config (also after reloads).
    pub require_runner_auth: bool,
    /// The home.
    pub home: keyward_config::home::Home,
    /// The runs' cgroups, where the kernel lets the daemon make them.
    pub cgroups: Option<Arc<keyward_runs::cgroup::RunCgroups>>,
    /// The last reload failed: when and why (`keyward status` shows it).
    pub reload_failed: Mutex<Option<keyward_api::ReloadFailure>>,
    /// What did not go as each run's program asked, for its `keyward run`.
    pub run_reports: Arc<keyward_runs::report::RunReports>,
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

    /// Redacts `value` for the evidence log (see [`redaction::redact`]).
    pub(crate) fn redact(&self, value: &mut serde_json::Value) {
        redaction::redact(&self.authority, &self.runs, value);
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
        let new = Arc::new(keyward_config::load(&source)?);
        let restart_needed = keyward_config::changes_needing_restart(&old.config, &new.config);
        if new.config.proxy.upstream_ca != old.config.proxy.upstream_ca {
            self.proxy
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
