//! Vault and secret routes. Secrets are write-only: no handler here returns
//! a value, and request bodies carrying values or passphrases are never
//! logged.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hyper::body::Bytes;
use keyward_api::{
    InitVaultRequest, KeyMode, RollbackRequest, SecretInfo, SecretList, SetSecretRequest,
    SnapshotList, UnsealRequest, VaultStatus,
};
use keyward_vault::{Vault, VaultError};
use secrecy::SecretString;
use serde::Serialize;

use crate::api_error::ApiError;
use crate::routes::json_body;
use crate::state::AppState;
use keyward_evidence::Kind;
use serde_json::json;

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        let (status, code) = match &e {
            VaultError::Sealed | VaultError::PassphraseRequired => {
                (StatusCode::LOCKED, "vault_sealed")
            }
            VaultError::Uninitialized => (StatusCode::CONFLICT, "vault_uninitialized"),
            VaultError::AlreadyInitialized { .. } => (StatusCode::CONFLICT, "vault_initialized"),
            VaultError::WrongPassphrase => (StatusCode::FORBIDDEN, "wrong_passphrase"),
            VaultError::EmptyPassphrase => (StatusCode::BAD_REQUEST, "bad_request"),
            VaultError::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_name"),
            VaultError::EmptyValue { .. } => (StatusCode::BAD_REQUEST, "empty_value"),
            VaultError::NotFound { .. } => (StatusCode::NOT_FOUND, "secret_not_found"),
            VaultError::SnapshotNotFound { .. } => (StatusCode::NOT_FOUND, "snapshot_not_found"),
            VaultError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "vault_corrupt"),
            VaultError::Swapped { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "vault_swapped"),
            VaultError::Exposed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "vault_exposed"),
            VaultError::Inconsistent { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "vault_inconsistent")
            }
            VaultError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "vault_io"),
        };
        if status.is_server_error() {
            tracing::error!("{e}");
        }
        ApiError::new(status, code, e.to_string())
    }
}

/// Runs `f` on the vault off the async workers: writes fsync.
pub(crate) async fn with_vault<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Vault) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, ApiError> {
    let vault = state.vault.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = vault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("vault task failed: {e}"),
        )
    })?
    .map_err(ApiError::from)
}

fn secret(text: Option<String>) -> Option<SecretString> {
    text.map(SecretString::from)
}

pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
) -> Result<Json<VaultStatus>, ApiError> {
    with_vault(&state, |v| v.status()).await.map(Json)
}

pub(crate) async fn init(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<VaultStatus>, ApiError> {
    let req: InitVaultRequest = json_body(body)?;
    let mode = req.mode;
    let status = with_vault(&state, move |v| v.init(mode, secret(req.passphrase))).await?;
    tracing::info!(mode = mode.as_str(), "vault initialized");
    // Run records are sealed with the vault's key from now on.
    crate::run_trust::ensure_key(&state).await;
    state
        .audit(
            Kind::Vault,
            None,
            json!({"event": "vault_initialized", "mode": mode.as_str()}),
        )
        .await;
    Ok(Json(status))
}

pub(crate) async fn unseal(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<VaultStatus>, ApiError> {
    let req: UnsealRequest = json_body(body)?;
    let result = with_vault(&state, move |v| v.unseal(secret(req.passphrase))).await;
    if result.is_ok() {
        // Restored runs waiting for the key are checked now.
        crate::run_trust::settle(&state).await;
        crate::run_trust::ensure_key(&state).await;
    }
    match &result {
        Ok(_) => tracing::info!("vault unsealed"),
        Err(e) => tracing::warn!("vault unseal failed: {}", e.message()),
    }
    let outcome = if result.is_ok() {
        "vault_unsealed"
    } else {
        "vault_unseal_failed"
    };
    state
        .audit(Kind::Vault, None, json!({"event": outcome}))
        .await;
    result.map(Json)
}

pub(crate) async fn seal(
    State(state): State<Arc<AppState>>,
) -> Result<Json<VaultStatus>, ApiError> {
    let status = with_vault(&state, |v| {
        v.seal();
        v.status()
    })
    .await?;
    tracing::info!("vault sealed");
    state
        .audit(Kind::Vault, None, json!({"event": "vault_sealed"}))
        .await;
    Ok(Json(status))
}

pub(crate) async fn history(
    State(state): State<Arc<AppState>>,
) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = with_vault(&state, |v| v.history()).await?;
    Ok(Json(SnapshotList { snapshots }))
}

pub(crate) async fn rollback(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<VaultStatus>, ApiError> {
    let req: RollbackRequest = json_body(body)?;
    let target = req.snapshot.clone();
    let status = with_vault(&state, move |v| v.rollback(&req.snapshot)).await?;
    tracing::info!(snapshot = target, "vault rolled back");
    state
        .audit(
            Kind::Vault,
            None,
            json!({"event": "vault_rolled_back", "snapshot": target}),
        )
        .await;
    Ok(Json(status))
}

pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<SecretList>, ApiError> {
    let secrets = with_vault(&state, |v| v.list()).await?;
    Ok(Json(SecretList { secrets }))
}

pub(crate) async fn set(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SecretInfo>, ApiError> {
    let req: SetSecretRequest = json_body(body)?;
    if req.value.len() > keyward_api::MAX_SECRET_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "secret_too_large",
            format!(
                "the value is {} bytes; a secret is at most {} KiB (keep a large file out of the \
                 vault and grant it as file:/path)",
                req.value.len(),
                keyward_api::MAX_SECRET_BYTES / 1024
            ),
        ));
    }
    // From here the value lives only in zeroizing types.
    let value = SecretString::from(req.value);
    let description = req.description;
    let log_name = name.clone();
    let info = with_vault(&state, move |v| v.set(&name, value, description)).await?;
    // The first secret may have made the vault: its key seals runs now.
    crate::run_trust::ensure_key(&state).await;
    tracing::info!(
        secret = log_name,
        fingerprint = info.fingerprint,
        "secret set"
    );
    state
        .audit(
            Kind::Secret,
            None,
            json!({"event": "secret_set", "name": info.name, "fingerprint": info.fingerprint}),
        )
        .await;
    Ok(Json(info))
}

#[derive(Serialize)]
pub(crate) struct Deleted {
    deleted: String,
}

pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let n = name.clone();
    with_vault(&state, move |v| v.remove(&n)).await?;
    tracing::info!(secret = name, "secret removed");
    state
        .audit(
            Kind::Secret,
            None,
            json!({"event": "secret_removed", "name": name}),
        )
        .await;
    Ok(Json(Deleted { deleted: name }))
}

/// Unseals a key-file vault at start; a passphrase vault stays sealed.
pub(crate) fn open_at_start(vault: &mut Vault) {
    match vault.mode() {
        Ok(Some(KeyMode::KeyFile)) => match vault.unseal(None) {
            Ok(status) => tracing::info!(
                secrets = status.secrets.unwrap_or_default(),
                "vault unsealed with its key file"
            ),
            Err(e) => tracing::error!("vault cannot be opened: {e}"),
        },
        Ok(Some(KeyMode::Passphrase)) => {
            tracing::info!("vault is sealed (passphrase mode); run `keyward vault unseal`")
        }
        Ok(None) => tracing::info!(
            "no vault yet; `keyward secret set NAME` or `keyward vault init` creates one"
        ),
        Err(e) => tracing::error!("vault cannot be opened: {e}"),
    }
}
