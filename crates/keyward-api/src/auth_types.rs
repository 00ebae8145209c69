//! Team identities over the admin API: tokens (`/v1/tokens`) and roles
//! (`/v1/roles`). A token's value appears only in the answer that issues or
//! rotates it.

use serde::{Deserialize, Serialize};

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueTokenRequest {
    /// Who will hold it (one token per user).
    pub user: String,
    /// Its role.
    pub role: String,
    /// Days until it stops working (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_days: Option<u32>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A token as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Who holds it.
    pub user: String,
    /// Its role.
    pub role: String,
    /// When it was issued or last rotated (RFC 3339).
    pub created: String,
    /// When it stops working, if ever.
    pub expires: Option<String>,
    /// Its last accepted use, if any (to the second).
    pub last_used: Option<String>,
    /// Free text.
    pub description: String,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// By user.
    pub tokens: Vec<TokenInfo>,
}

/// A token just issued or rotated: shown this once (`Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// `kwt_` and 32 hex digits.
    pub token: String,
    /// What is kept of it.
    pub info: TokenInfo,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[REDACTED]")
            .field("info", &self.info)
            .finish()
    }
}

/// `POST /v1/tokens/rotate-all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTokens {
    /// One per user.
    pub tokens: Vec<IssuedToken>,
}

/// A role: `POST /v1/roles` (all of it), `PATCH /v1/roles/{name}` (what
/// changes; `rate_limit: ""` removes the limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// The name (`POST` only; the path names it for `PATCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scope words: evaluate, runs.create, runs.read, grants.use:NAME,
    /// grants.use:*, secrets.write, policy.read, audit.read, admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// `N/WINDOW`, e.g. `120/60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A role as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// Its name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its per-user rate limit, if any (`N/WINDOW`).
    pub rate_limit: Option<String>,
    /// Free text.
    pub description: String,
    /// Built in (cannot be changed or deleted).
    pub builtin: bool,
    /// The users whose tokens hold it.
    pub users: Vec<String>,
}

/// `GET /v1/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleList {
    /// Built-in roles first.
    pub roles: Vec<RoleInfo>,
}
