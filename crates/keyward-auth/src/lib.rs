//! keyward's team identities: API tokens (shown once, stored as SHA-256),
//! roles with scopes, per-user sliding-window rate limits, all behind one
//! state interface ([`AuthState`]) whose default keeps them in files in
//! the home.
//!
//! A server checks a request in two steps: [`AuthState::authenticate`]
//! (which token, whose, still valid?) and [`authorize`] (does the role
//! hold the scope, is the user within the role's rate limit?).

mod error;
mod rate_limit;
mod role;
mod scope;
mod store;
mod token;

pub use error::{AuthError, whole_seconds};
pub use rate_limit::RateLimiter;
pub use role::{InvalidRateLimit, RateLimit, Role, builtin_roles};
pub use scope::{Scope, UnknownScope};
pub use store::{AuthState, FileAuthState, Issued, Principal, RoleSpec, authorize};
pub use token::{TOKEN_PREFIX, TokenRecord, TokenValue};

/// `t` as RFC 3339 to the second; a time past the year 9999 (which only a
/// tampered file could hold) reads as such instead of failing.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_seconds(t)) {
        Ok(()) => text,
        Err(_) => "after 9999-12-31T23:59:59Z".to_owned(),
    }
}

/// The longest a token may be issued for.
pub const MAX_EXPIRY_DAYS: u32 = 36_500;
