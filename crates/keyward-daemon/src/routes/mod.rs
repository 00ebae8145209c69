//! The admin API's routes: HTTP/1.1 JSON on the Unix socket. Who may call
//! which route is decided in [`guard`] before a handler runs.

mod auth;
mod daemon;
mod grants;
mod guard;
pub(crate) mod policy;
pub(crate) mod runs;
pub(crate) mod vault;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::routing::{delete, get, patch, post, put};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;

use crate::api_error::ApiError;
use crate::state::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(daemon::health))
        .route("/v1/shutdown", post(daemon::shutdown))
        .route("/v1/reload", post(grants::reload))
        .route("/v1/grants", get(grants::list))
        .route("/v1/evaluate", post(policy::evaluate))
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/ca/rotate", post(runs::rotate_ca))
        .route("/v1/runs/{id}/broker", post(crate::broker::attach))
        .route("/v1/runs/{id}/problems", get(runs::problems))
        .route(
            "/v1/runs/{id}",
            get(runs::get_one).patch(runs::patch).delete(runs::remove),
        )
        .route("/v1/vault", get(vault::status))
        .route("/v1/vault/init", post(vault::init))
        .route("/v1/vault/unseal", post(vault::unseal))
        .route("/v1/vault/seal", post(vault::seal))
        .route("/v1/vault/history", get(vault::history))
        .route("/v1/vault/rollback", post(vault::rollback))
        .route("/v1/secrets", get(vault::list))
        .route("/v1/secrets/{name}", put(vault::set).delete(vault::remove))
        .route("/v1/tokens", get(auth::list_tokens).post(auth::issue_token))
        .route("/v1/tokens/rotate-all", post(auth::rotate_all_tokens))
        .route("/v1/tokens/{user}", delete(auth::revoke_token))
        .route("/v1/tokens/{user}/rotate", post(auth::rotate_token))
        .route("/v1/roles", get(auth::list_roles).post(auth::create_role))
        .route(
            "/v1/roles/{name}",
            patch(auth::update_role).delete(auth::delete_role),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard::track))
        .with_state(state)
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
