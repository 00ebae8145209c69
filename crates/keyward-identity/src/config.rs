//! `[auth]` in `keyward.toml`: whether runner auth is required, the HMAC
//! runner key, and `[auth.oidc]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every evaluation needs verified runner auth; without it the decision
    /// is a block (`runner_auth.invalid`).
    pub require_runner_auth: bool,
    /// The shared key for HMAC runner claims (hex, or at least 32 bytes of
    /// text). `KEYWARD_RUNNER_AUTH_HMAC_KEY` in the daemon's environment
    /// may hold it instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_hmac_key_file: Option<PathBuf>,
    /// The key id signers name (default `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_key_id: Option<String>,
    /// `[auth.oidc]`: CI-provider OIDC tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
}

/// `[auth.oidc]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Whose tokens these are: `github`, `gitlab`, `azure` or `generic`
    /// (claims already named like runner claims).
    pub provider: Provider,
    /// The exact `iss` tokens must carry.
    pub issuer: String,
    /// The exact `aud` tokens must carry.
    pub audience: String,
    /// The issuer's JWKS, fetched over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A JWKS file, read at load (instead of `jwks_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for `jwks_url` instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Allowed signature algorithms: `RS256` and/or `ES256`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// A token with an unknown `kid` refetches the JWKS at most this often.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch: String,
    /// Cached keys older than this are refetched on next use (a failed
    /// fetch keeps them).
    #[serde(default = "default_cache_ttl")]
    pub jwks_cache_ttl: String,
    /// A JWKS document larger than this is refused.
    #[serde(default = "default_max_bytes")]
    pub jwks_max_bytes: u64,
    /// Globs verified runner claims must match, e.g.
    /// `{ repository = "acme/*", ref = "refs/heads/main" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}
fn default_leeway() -> String {
    "60s".to_owned()
}
fn default_min_refetch() -> String {
    "60s".to_owned()
}
fn default_cache_ttl() -> String {
    "1h".to_owned()
}
fn default_max_bytes() -> u64 {
    64 * 1024
}

/// A CI provider whose token claims are mapped to runner claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// GitHub Actions.
    Github,
    /// GitLab CI.
    Gitlab,
    /// Azure Pipelines.
    Azure,
    /// Claims named like runner claims already.
    Generic,
}

impl Provider {
    /// The `provider` claim of tokens from this provider.
    pub fn claim(self) -> &'static str {
        match self {
            Provider::Github => "github-actions",
            Provider::Gitlab => "gitlab-ci",
            Provider::Azure => "azure-pipelines",
            Provider::Generic => "oidc",
        }
    }
}
