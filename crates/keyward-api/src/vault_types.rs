//! Vault and secret wire types. No type here ever carries a secret value
//! back to a client: values only travel inward, in [`SetSecretRequest`] and
//! passphrases.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the vault key is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// An age X25519 identity in `vault/identity.txt`; unsealed at start.
    KeyFile,
    /// The identity is encrypted with a passphrase; the daemon starts sealed.
    Passphrase,
}

impl KeyMode {
    /// `key_file` or `passphrase`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::KeyFile => "key_file",
            KeyMode::Passphrase => "passphrase",
        }
    }
}

/// uninitialized | sealed | unsealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultState {
    /// No vault yet.
    Uninitialized,
    /// The key is not in memory.
    Sealed,
    /// The key is in memory.
    Unsealed,
}

impl VaultState {
    /// `uninitialized`, `sealed` or `unsealed`.
    pub fn as_str(self) -> &'static str {
        match self {
            VaultState::Uninitialized => "uninitialized",
            VaultState::Sealed => "sealed",
            VaultState::Unsealed => "unsealed",
        }
    }
}

/// `GET /v1/vault`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStatus {
    /// The seal state.
    pub state: VaultState,
    /// The key mode, once initialized.
    pub mode: Option<KeyMode>,
    /// How many snapshots exist.
    pub snapshots: usize,
    /// The current (newest) snapshot.
    pub current: Option<String>,
    /// The vault's id (trusted on first use).
    pub vault_id: Option<String>,
    /// How many secrets it holds (unsealed only).
    #[serde(default)]
    pub secrets: Option<usize>,
    /// Why the current snapshot cannot be used, if it cannot.
    #[serde(default)]
    pub error: Option<String>,
}

/// A secret's metadata: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// First 8 hex of HMAC-SHA256 of the value under a vault-local key.
    pub fingerprint: String,
}

/// `GET /v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    /// Sorted by name.
    pub secrets: Vec<SecretInfo>,
}

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// File name, e.g. `20261128T170626.042Z_set-github-token.age`.
    pub name: String,
    /// The time in its name, RFC 3339.
    pub time: String,
    /// What change made it.
    pub slug: String,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /v1/vault/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    /// Oldest first; the last is current.
    pub snapshots: Vec<SnapshotInfo>,
}

/// The largest secret value the vault stores: 256 KiB. Tokens, keys and
/// certificates are far smaller; every vault snapshot carries every
/// secret, so a large one slows every later change. A large file belongs
/// in a `file:` reference.
pub const MAX_SECRET_BYTES: usize = 256 * 1024;

/// `PUT /v1/secrets/{name}`. `Debug` never shows the value.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SetSecretRequest {
    /// The value (write-only).
    pub value: String,
    /// Free text; `None` keeps the existing description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetSecretRequest")
            .field("value", &"[REDACTED]")
            .field("description", &self.description)
            .finish()
    }
}

/// `POST /v1/vault/init`. `Debug` never shows the passphrase.
#[derive(Clone, Serialize, Deserialize)]
pub struct InitVaultRequest {
    /// Key mode.
    pub mode: KeyMode,
    /// Required with `passphrase` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

impl Default for InitVaultRequest {
    fn default() -> Self {
        Self {
            mode: KeyMode::KeyFile,
            passphrase: None,
        }
    }
}

impl fmt::Debug for InitVaultRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitVaultRequest")
            .field("mode", &self.mode)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// `POST /v1/vault/unseal`. `Debug` never shows the passphrase.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct UnsealRequest {
    /// Needed for passphrase vaults; ignored by key-file vaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

impl fmt::Debug for UnsealRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealRequest")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// `POST /v1/vault/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The snapshot file name to make current again.
    pub snapshot: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_values_and_passphrases() {
        let set = SetSecretRequest {
            value: "s3cret-v".into(),
            description: None,
        };
        let init = InitVaultRequest {
            mode: KeyMode::Passphrase,
            passphrase: Some("pass-p".into()),
        };
        let unseal = UnsealRequest {
            passphrase: Some("pass-p".into()),
        };
        let all = format!("{set:?}{init:?}{unseal:?}");
        assert!(
            !all.contains("s3cret-v") && !all.contains("pass-p"),
            "{all}"
        );
    }
}
