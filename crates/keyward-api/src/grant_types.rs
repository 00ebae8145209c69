//! Grant and config wire types. A grant shows its secret *reference*
//! (`vault:github`), never a value.

use serde::{Deserialize, Serialize};

/// `GET /v1/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    /// Sorted by name.
    pub grants: Vec<GrantInfo>,
}

/// One grant and whether its secret resolves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Its name.
    pub name: String,
    /// `preset` (built in) or `config`.
    pub source: String,
    /// The secret reference, e.g. `vault:github`.
    pub secret: String,
    /// Host patterns the secret may go to.
    pub hosts: Vec<String>,
    /// How it is injected.
    pub inject: InjectInfo,
    /// The child's placeholder variable, if any.
    #[serde(default)]
    pub placeholder_env: Option<String>,
    /// The secret may also go over plain HTTP (off: TLS only).
    #[serde(default)]
    pub plaintext: bool,
    /// The placeholder is swapped in request bodies too.
    #[serde(default)]
    pub substitute_body: bool,
    /// `ok`, `missing`, `sealed` or `error`.
    pub status: String,
    /// Why, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a grant injects its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectInfo {
    /// `header`, `basic` or `query`.
    pub kind: String,
    /// Header name (`header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Header value template (`header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// User name (`basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Parameter name (`query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// `POST /v1/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResponse {
    /// `"reloaded"`.
    pub status: String,
    /// The config file.
    pub config: String,
    /// False when the file is absent and defaults apply.
    pub from_file: bool,
    /// Settings that changed but apply only when the daemon restarts
    /// (`proxy.listen`, ...): everything else took effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}
