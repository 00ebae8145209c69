//! Why a request or a change of tokens and roles was refused, with the
//! API code and HTTP status each maps to.

use std::time::{Duration, SystemTime};

/// A refused request or change.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token matches (unknown, revoked, rotated away or malformed).
    #[error("the token is not valid (unknown, revoked or replaced by a rotation)")]
    TokenInvalid,
    /// The token matched but its time is over.
    #[error("the token of {user} expired at {}", crate::rfc3339(*at))]
    TokenExpired {
        /// Its user.
        user: String,
        /// When it expired.
        at: SystemTime,
    },
    /// The role lacks the scope the request needs.
    #[error("{user}'s role {role} does not hold the scope {scope} that this request needs")]
    ScopeDenied {
        /// Who asked.
        user: String,
        /// Their role.
        role: String,
        /// The scope needed.
        scope: String,
    },
    /// Too many requests in the role's window.
    #[error("{user} made {max} requests in the last {window}; retry in {}s", crate::error::whole_seconds(*retry_after))]
    RateLimited {
        /// Who asked.
        user: String,
        /// The limit's request count.
        max: u32,
        /// The limit's window, for people.
        window: String,
        /// When a request would be accepted again.
        retry_after: Duration,
    },
    /// A change names a role that does not exist.
    #[error("no role named {name}; roles: {known}")]
    UnknownRole {
        /// The name given.
        name: String,
        /// The roles there are.
        known: String,
    },
    /// A role name is taken.
    #[error("a role named {0} exists already (change it with `keyward role update`)")]
    RoleExists(String),
    /// Built-in roles do not change.
    #[error("{0} is a built-in role and cannot be changed or deleted; create a role of your own")]
    BuiltinRole(String),
    /// A role that users hold is not deleted.
    #[error(
        "role {role} is held by {users}: give them another role (token revoke, then token issue) first"
    )]
    RoleInUse {
        /// The role.
        role: String,
        /// Its users, comma-separated.
        users: String,
    },
    /// A user holds a token already.
    #[error(
        "{0} holds a token already: `keyward token rotate {0}` replaces it, `keyward token revoke {0}` ends it"
    )]
    UserHasToken(String),
    /// No token for this user.
    #[error("{0} holds no token")]
    NoToken(String),
    /// A name, scope, limit or expiry that cannot be right.
    #[error("{0}")]
    Invalid(String),
    /// A state file is not what this version writes.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, where.
        message: String,
    },
    /// Reading or writing a state file failed.
    #[error("{0}")]
    Io(String),
}

/// A wait in whole seconds, rounded up (at least 1): what `Retry-After`
/// says and the message repeats.
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl AuthError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::TokenInvalid => "token_invalid",
            AuthError::TokenExpired { .. } => "token_expired",
            AuthError::ScopeDenied { .. } => "scope_denied",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::UnknownRole { .. } | AuthError::NoToken(_) => "not_found",
            AuthError::RoleExists(_) | AuthError::UserHasToken(_) | AuthError::RoleInUse { .. } => {
                "conflict"
            }
            AuthError::BuiltinRole(_) => "builtin_role",
            AuthError::Invalid(_) => "bad_request",
            AuthError::Corrupt { .. } | AuthError::Io(_) => "auth_state",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::TokenInvalid | AuthError::TokenExpired { .. } => 401,
            AuthError::ScopeDenied { .. } | AuthError::BuiltinRole(_) => 403,
            AuthError::RateLimited { .. } => 429,
            AuthError::UnknownRole { .. } | AuthError::NoToken(_) => 404,
            AuthError::RoleExists(_) | AuthError::UserHasToken(_) | AuthError::RoleInUse { .. } => {
                409
            }
            AuthError::Invalid(_) => 400,
            AuthError::Corrupt { .. } | AuthError::Io(_) => 500,
        }
    }
}
