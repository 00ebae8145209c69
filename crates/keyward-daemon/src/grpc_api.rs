//! The gRPC listener (`[server.grpc]`): keyward-grpc's service answered by
//! this daemon. Decisions go through the same policy and evidence log as
//! the admin API's, with the remote caller (token user, role, client
//! certificate) written into each record; tokens are checked by the team
//! state the admin API uses.

use std::sync::Arc;

use keyward_api::{DecisionResponse, EvaluateRequest, GrpcListening, Health, RunInfo};
use keyward_auth::{AuthError, Principal, Scope};
use keyward_grpc::{Backend, BackendError, Caller, Gate, TlsFiles};
use tokio::sync::oneshot;

use crate::error::DaemonError;
use crate::state::AppState;
use keyward_config::GrpcConfig;

/// The daemon as the gRPC service's backend and token gate.
pub(crate) struct DaemonApi(pub Arc<AppState>);

impl Backend for DaemonApi {
    async fn evaluate(
        &self,
        req: EvaluateRequest,
        caller: Caller,
    ) -> Result<DecisionResponse, BackendError> {
        let slot = self.0.evidence.reserve();
        // The same check the admin API makes of a JSON body: an action
        // and, where it needs one, a target (the field is named).
        if let Err(e) = req.check() {
            return Err(BackendError {
                code: tonic::Code::InvalidArgument,
                api_code: e.code.to_owned(),
                message: e.message,
            });
        }
        // A remote caller is decided by the configured policy: naming
        // another pack (the built-in one is laxer) is refused, not obeyed,
        // as for a process inside a run.
        let configured = self.0.config().policy.id().to_owned();
        if let Some(pack) = req.policy_pack.as_deref()
            && pack != configured
        {
            return Err(BackendError {
                code: tonic::Code::PermissionDenied,
                api_code: "policy_pack_refused".to_owned(),
                message: format!(
                    "policy_pack {pack:?}: remote callers are decided by this server's policy \
                     ({configured:?}) and cannot pick another"
                ),
            });
        }
        let record = serde_json::json!({
            "user": caller.user,
            "role": caller.role,
            "client_certificate": caller.client_certificate,
            "via": "grpc",
        });
        crate::routes::policy::decide_on_record(&self.0, slot, req, None, Some(record))
            .await
            .map_err(|e| BackendError {
                code: match e.status().as_u16() {
                    400 | 413 | 422 => tonic::Code::InvalidArgument,
                    401 => tonic::Code::Unauthenticated,
                    403 => tonic::Code::PermissionDenied,
                    404 => tonic::Code::NotFound,
                    429 => tonic::Code::ResourceExhausted,
                    503 => tonic::Code::Unavailable,
                    _ => tonic::Code::Internal,
                },
                api_code: e.code().to_owned(),
                message: e.message().to_owned(),
            })
    }

    fn list_runs(&self, caller: &Caller) -> Vec<RunInfo> {
        // A token's user sees the runs it created; the admin scope, all.
        self.0
            .runs
            .list()
            .iter()
            .filter(|r| caller.admin || r.token_user.as_deref() == Some(caller.user.as_str()))
            .map(|r| r.info())
            .collect()
    }

    fn health(&self) -> Health {
        self.0.health()
    }
}

impl Gate for DaemonApi {
    fn check(&self, token: &str, scope: Option<&Scope>) -> Result<Principal, AuthError> {
        self.0.team.check_scope(token, scope)
    }
}

/// The listener, running: stop it with [`GrpcListener::stop`].
pub(crate) struct GrpcListener {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcListener {
    /// Stops accepting and lets calls under way finish, for at most
    /// `drain`: a stream held open (a health watch, a body never finished)
    /// does not keep the daemon from stopping.
    pub(crate) async fn stop(self, drain: std::time::Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(drain, &mut task).await.is_err() {
            tracing::warn!(
                "gRPC calls did not finish within {}s; closing them",
                drain.as_secs()
            );
            task.abort();
        }
    }
}

/// Binds `[server.grpc]` and serves it; says at start (and in health)
/// where, and whether without TLS.
pub(crate) async fn start(
    state: &Arc<AppState>,
    config: &GrpcConfig,
) -> Result<GrpcListener, DaemonError> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(DaemonError::io(format!(
            "cannot listen on server.grpc.listen {}",
            config.listen
        )))?;
    let addr = listener
        .local_addr()
        .map_err(DaemonError::io("cannot read the gRPC listener's address"))?;
    let tls = (!config.tls.disable).then(|| TlsFiles {
        cert_file: config.tls.cert_file.clone().unwrap_or_default(),
        key_file: config.tls.key_file.clone().unwrap_or_default(),
        client_ca_file: config.tls.client_ca_file.clone(),
    });
    let protection = match &tls {
        None => "none",
        Some(t) if t.client_ca_file.is_some() => "mutual_tls",
        Some(_) => "tls",
    };
    if tls.is_none() {
        tracing::warn!(
            %addr,
            "the gRPC listener serves WITHOUT TLS (server.grpc.tls.disable): API tokens and \
             decisions cross the network in clear; use it only on a network you trust"
        );
    } else {
        tracing::info!(%addr, tls = protection, "gRPC listener ready");
    }
    // Built (the certificate and key parsed) before serving, so bad files
    // stop the start, saying why.
    if let Some(tls) = &tls {
        keyward_grpc::check_tls(tls).map_err(|e| DaemonError::Io {
            what: "server.grpc.tls".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let _ = state.grpc.set(GrpcListening {
        addr: addr.to_string(),
        tls: protection.to_owned(),
    });
    let api = Arc::new(DaemonApi(state.clone()));
    let max_connections = config.max_connections;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = keyward_grpc::serve(
            listener,
            max_connections,
            tls.as_ref(),
            api.clone(),
            api,
            async {
                let _ = stopped.await;
            },
        )
        .await;
        if let Err(e) = served {
            tracing::error!("the gRPC listener stopped: {e}");
        }
    });
    Ok(GrpcListener { stop, task })
}
