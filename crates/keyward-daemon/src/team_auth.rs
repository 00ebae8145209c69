//! Team mode's identities in the daemon: a request that carries
//! `Authorization: Bearer kwt_...` is decided by that token's role (its
//! scopes and rate limit), not by the caller's uid, and is attributed to
//! the token's user in the evidence log. The state lives in
//! `<home>/auth/` (keyward-auth's files); the routes that change it are
//! in `auth_routes.rs`.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use keyward_auth::{
    AuthError, AuthState as _, FileAuthState, Principal, RateLimiter, Scope, authorize,
};

use crate::api_error::ApiError;

/// How often, at most, last-used times are written while tokens are used.
const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// The team's tokens and roles, and the per-user rate-limit windows.
pub(crate) struct TeamAuth {
    state: Mutex<FileAuthState>,
    limiter: RateLimiter,
    usage_written: Mutex<Instant>,
}

impl TeamAuth {
    /// The state in `dir`; files this version cannot read stop the start.
    pub(crate) fn open(dir: &Path) -> Result<Self, AuthError> {
        Ok(Self {
            state: Mutex::new(FileAuthState::open(dir)?),
            limiter: RateLimiter::default(),
            usage_written: Mutex::new(Instant::now()),
        })
    }

    /// The state, for the routes that read or change it.
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, FileAuthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a user's rate-limit window (their token was revoked or
    /// rotated, or their role changed).
    pub(crate) fn forget(&self, user: &str) {
        self.limiter.forget(user);
    }

    /// The user a request's token belongs to, once the token is valid, its
    /// role holds the scope `method path` needs and the user is within the
    /// role's rate limit.
    pub(crate) fn check(
        &self,
        presented: &str,
        method: &Method,
        path: &str,
    ) -> Result<Principal, AuthError> {
        self.check_scope(presented, Some(&scope_for(method, path)))
    }

    /// The user a token belongs to, once it is valid and (with a scope)
    /// its role holds it and the user is within the role's rate limit.
    /// Without a scope (gRPC health) only the token is checked.
    pub(crate) fn check_scope(
        &self,
        presented: &str,
        scope: Option<&Scope>,
    ) -> Result<Principal, AuthError> {
        let now = SystemTime::now();
        let mut state = self.state();
        let principal = state.authenticate(presented, now)?;
        if let Some(scope) = scope {
            authorize(&principal, scope, &self.limiter, Instant::now())?;
        }
        state.record_use(&principal.user, now);
        let mut written = self.usage_written.lock().unwrap_or_else(|p| p.into_inner());
        if written.elapsed() >= USAGE_WRITE_INTERVAL {
            *written = Instant::now();
            if let Err(e) = state.persist_usage() {
                tracing::warn!("cannot write the tokens' last-used times: {e}");
            }
        }
        Ok(principal)
    }

    /// Writes pending last-used times (at shutdown).
    pub(crate) fn flush(&self) {
        if let Err(e) = self.state().persist_usage() {
            tracing::warn!("cannot write the tokens' last-used times: {e}");
        }
    }
}

/// The presented token of a request that carries one: `None` without an
/// `Authorization` header; any header that is not `Bearer <token>` is
/// presented as is (and refused as `token_invalid`).
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().unwrap_or_default();
    Some(text.strip_prefix("Bearer ").unwrap_or(text))
}

/// The scope a token's role must hold for `method path`. Health is not
/// routed here (it is answered to anyone who reaches the socket).
pub(crate) fn scope_for(method: &Method, path: &str) -> Scope {
    let runs = path == "/v1/runs" || path.starts_with("/v1/runs/");
    match (method, path) {
        (&Method::POST, "/v1/evaluate") => Scope::Evaluate,
        (&Method::GET, _) if runs => Scope::RunsRead,
        (&Method::POST | &Method::PATCH | &Method::DELETE, _) if runs => Scope::RunsCreate,
        (&Method::GET, "/v1/grants") => Scope::PolicyRead,
        (_, "/v1/secrets") => Scope::SecretsWrite,
        (_, p) if p.starts_with("/v1/secrets/") => Scope::SecretsWrite,
        _ => Scope::Admin,
    }
}

/// The answer to a refused token: its status and code, and for a rate
/// limit a `Retry-After` in whole seconds.
pub(crate) fn refusal(err: &AuthError) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = ApiError::new(status, err.code(), err.to_string()).into_response();
    if let AuthError::RateLimited { retry_after, .. } = err {
        let seconds = keyward_auth::whole_seconds(*retry_after);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_the_scope_its_work_needs() {
        for (method, path, scope) in [
            (Method::POST, "/v1/evaluate", Scope::Evaluate),
            (Method::GET, "/v1/runs", Scope::RunsRead),
            (Method::GET, "/v1/runs/run_1/problems", Scope::RunsRead),
            (Method::POST, "/v1/runs", Scope::RunsCreate),
            (Method::DELETE, "/v1/runs/run_1", Scope::RunsCreate),
            (Method::POST, "/v1/runs/run_1/broker", Scope::RunsCreate),
            (Method::GET, "/v1/grants", Scope::PolicyRead),
            (Method::GET, "/v1/secrets", Scope::SecretsWrite),
            (Method::PUT, "/v1/secrets/github", Scope::SecretsWrite),
            (Method::POST, "/v1/vault/unseal", Scope::Admin),
            (Method::POST, "/v1/tokens", Scope::Admin),
            (Method::GET, "/v1/roles", Scope::Admin),
            (Method::POST, "/v1/reload", Scope::Admin),
            (Method::POST, "/v1/shutdown", Scope::Admin),
            (Method::GET, "/v1/runsx", Scope::Admin),
            (Method::GET, "/v1/nothing", Scope::Admin),
        ] {
            assert_eq!(scope_for(&method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn a_token_is_read_from_a_bearer_header_and_anything_else_is_presented_as_is() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer kwt_x"),
        );
        assert_eq!(presented_token(&headers), Some("kwt_x"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_token(&headers), Some("Basic abc"));
    }
}
