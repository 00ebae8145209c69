//! Why runner auth was refused: one variant per check, so a block decision
//! can name the check that failed.

use std::fmt;

/// The check a runner auth failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No `runner_auth` was given.
    Missing,
    /// `runner_auth` is not a well-formed envelope, token or claims object.
    Malformed,
    /// An algorithm that is not allowed (`none`, `HS256`, ...), or a key
    /// whose type does not fit the token's algorithm.
    Algorithm,
    /// The HMAC key id is not the configured one, or the token has no `kid`.
    KeyId,
    /// The signature does not verify.
    Signature,
    /// The token's `iss` is not the configured issuer.
    Issuer,
    /// The token's `aud` is not the configured audience.
    Audience,
    /// The token's `exp` has passed (beyond the leeway).
    Expired,
    /// The token's `nbf` or `iat` lies in the future (beyond the leeway).
    NotYetValid,
    /// No key with the token's `kid` is known, even after a refetch.
    UnknownKid,
    /// A verified claim does not match a required glob.
    ClaimMismatch,
    /// No signing keys are available: the JWKS could not be fetched and
    /// none are cached.
    JwksUnavailable,
    /// The request uses a mode the daemon has no `[auth]` settings for.
    NotConfigured,
}

impl Check {
    /// A short name for the check, used in reasons and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Missing => "missing",
            Check::Malformed => "malformed",
            Check::Algorithm => "algorithm",
            Check::KeyId => "key id",
            Check::Signature => "signature",
            Check::Issuer => "issuer",
            Check::Audience => "audience",
            Check::Expired => "expired",
            Check::NotYetValid => "not yet valid",
            Check::UnknownKid => "unknown kid",
            Check::ClaimMismatch => "claim mismatch",
            Check::JwksUnavailable => "jwks unavailable",
            Check::NotConfigured => "not configured",
        }
    }
}

/// A refused runner auth: the check and what was wrong. The detail never
/// holds the token, the signature or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runner auth failed the {} check: {detail}", check.as_str())]
pub struct AuthFailure {
    /// The check that failed.
    pub check: Check,
    /// What was wrong, for people.
    pub detail: String,
}

impl AuthFailure {
    pub(crate) fn new(check: Check, detail: impl Into<String>) -> Self {
        Self {
            check,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
