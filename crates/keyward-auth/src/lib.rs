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

pub use error::AuthError;
pub use rate_limit::RateLimiter;
pub use role::{InvalidRateLimit, RateLimit, Role, builtin_roles};
pub use scope::{Scope, UnknownScope};
pub use store::{AuthState, FileAuthState, Issued, Principal, RoleSpec, authorize};
pub use token::{TOKEN_PREFIX, TokenRecord, TokenValue};
