//! The `keyward.v1.Keyward` service: each call's token checked by the
//! [`Gate`] for the scope the method needs, then answered by the
//! [`Backend`] (the daemon), with the caller named.

use std::future::Future;
use std::sync::Arc;

use keyward_api::{DecisionResponse, EvaluateRequest, Health, RunInfo};
use keyward_auth::{AuthError, Principal, Scope};
use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::keyward_server::Keyward;

/// Who made a call, as the evidence log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's user.
    pub user: String,
    /// Their role.
    pub role: String,
    /// The subject of the client certificate, with mutual TLS.
    pub client_certificate: Option<String>,
    /// The role holds the `admin` scope (sees every run).
    pub admin: bool,
}

/// Why the backend could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// The gRPC code.
    pub code: tonic::Code,
    /// The admin API's error code (`bad_request`, `evidence_unavailable`, ...).
    pub api_code: String,
    /// What went wrong, for people (a bad request names the field).
    pub message: String,
}

/// What the service asks of the daemon.
pub trait Backend: Send + Sync + 'static {
    /// A decision for `req`, on record before it is answered.
    fn evaluate(
        &self,
        req: EvaluateRequest,
        caller: Caller,
    ) -> impl Future<Output = Result<DecisionResponse, BackendError>> + Send;
    /// The runs `caller` may see, oldest first.
    fn list_runs(&self, caller: &Caller) -> Vec<RunInfo>;
    /// The daemon's health.
    fn health(&self) -> Health;
}

/// Checks a call's token: valid, and (with a scope) held by its role and
/// within its rate limit.
pub trait Gate: Send + Sync + 'static {
    /// The token's user and role.
    fn check(&self, token: &str, scope: Option<&Scope>) -> Result<Principal, AuthError>;
}

/// A refused token as a gRPC status: the admin API's code in the
/// `keyward-error` metadata, and `retry-after` (seconds) for a rate limit.
pub fn auth_status(err: &AuthError) -> Status {
    let code = match err {
        AuthError::TokenInvalid | AuthError::TokenExpired { .. } => tonic::Code::Unauthenticated,
        AuthError::ScopeDenied { .. } | AuthError::BuiltinRole(_) => tonic::Code::PermissionDenied,
        AuthError::RateLimited { .. } => tonic::Code::ResourceExhausted,
        AuthError::Invalid(_) => tonic::Code::InvalidArgument,
        AuthError::UnknownRole { .. } | AuthError::NoToken(_) => tonic::Code::NotFound,
        AuthError::RoleExists(_) | AuthError::UserHasToken(_) | AuthError::RoleInUse { .. } => {
            tonic::Code::AlreadyExists
        }
        AuthError::Corrupt { .. } | AuthError::Io(_) => tonic::Code::Internal,
    };
    let mut status = Status::new(code, err.to_string());
    if let Ok(value) = err.code().parse() {
        status.metadata_mut().insert("keyward-error", value);
    }
    if let AuthError::RateLimited { retry_after, .. } = err {
        let seconds = keyward_auth::whole_seconds(*retry_after);
        if let Ok(value) = seconds.to_string().parse() {
            status.metadata_mut().insert("retry-after", value);
        }
    }
    status
}

/// The token of a call: exactly one `authorization: Bearer <token>`.
pub(crate) fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    let refuse = |why: &str| {
        let mut status = Status::unauthenticated(why.to_owned());
        if let Ok(value) = "token_invalid".parse() {
            status.metadata_mut().insert("keyward-error", value);
        }
        status
    };
    let mut values = metadata.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(refuse(
            "send exactly one `authorization: Bearer kwt_...` (keyward token issue makes one)",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refuse("the authorization must be `Bearer kwt_...`"))
}

fn backend_status(err: BackendError) -> Status {
    let mut status = Status::new(err.code, err.message);
    if let Ok(value) = err.api_code.parse() {
        status.metadata_mut().insert("keyward-error", value);
    }
    status
}

/// The service over a backend and a gate.
pub struct KeywardService<B, G> {
    backend: Arc<B>,
    gate: Arc<G>,
}

impl<B, G> KeywardService<B, G> {
    pub fn new(backend: Arc<B>, gate: Arc<G>) -> Self {
        Self { backend, gate }
    }
}

impl<B: Backend, G: Gate> KeywardService<B, G> {
    /// The caller of `req` once its token passes for `scope`.
    fn admit<T>(&self, req: &Request<T>, scope: Option<Scope>) -> Result<Caller, Status> {
        let token = bearer(req.metadata())?;
        let principal = self
            .gate
            .check(token, scope.as_ref())
            .map_err(|e| auth_status(&e))?;
        Ok(Caller {
            admin: principal.role.allows(&Scope::Admin),
            user: principal.user,
            role: principal.role.name,
            client_certificate: crate::tls::client_subject(req),
        })
    }
}

#[tonic::async_trait]
impl<B: Backend, G: Gate> Keyward for KeywardService<B, G> {
    async fn evaluate(
        &self,
        request: Request<proto::EvaluateRequest>,
    ) -> Result<Response<proto::DecisionResponse>, Status> {
        let caller = self.admit(&request, Some(Scope::Evaluate))?;
        let req = EvaluateRequest::from(request.into_inner());
        let decision = self
            .backend
            .evaluate(req, caller)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(decision.into()))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        let caller = self.admit(&request, Some(Scope::RunsRead))?;
        let runs = self.backend.list_runs(&caller);
        Ok(Response::new(proto::ListRunsResponse {
            runs: runs.iter().map(Into::into).collect(),
        }))
    }

    async fn health(
        &self,
        request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        self.admit(&request, None)?;
        let health = self.backend.health();
        Ok(Response::new(proto::HealthResponse {
            status: health.status,
            version: health.version,
            commit: health.commit,
            uptime_s: health.uptime_s,
        }))
    }
}
