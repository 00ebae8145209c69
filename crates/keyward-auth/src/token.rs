//! API tokens: `kwt_` and 32 hex digits (128 bits from the OS's random
//! source), shown once when issued and kept only as their SHA-256.

use std::fmt;
use std::time::SystemTime;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// What every token starts with, so a scanner (or a person) knows one.
pub const TOKEN_PREFIX: &str = "kwt_";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 16;

/// A token's value: printed once, then only its hash is kept. `Debug`
/// never shows it.
pub struct TokenValue(String);

impl TokenValue {
    /// A new token from the OS's random source.
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// The value, to print once for its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenValue([REDACTED])")
    }
}

/// SHA-256 of a token's text: what the store keeps and compares.
pub type TokenHash = [u8; 32];

/// The hash of `presented`, whatever it is (a malformed token is hashed
/// too, so refusing it costs what checking a good one does).
pub fn hash_token(presented: &str) -> TokenHash {
    Sha256::digest(presented.as_bytes()).into()
}

/// Whether `presented` has a token's shape.
pub fn well_formed(presented: &str) -> bool {
    presented.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 2 * TOKEN_BYTES
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One user's token, as stored: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Who holds it (one token per user).
    pub user: String,
    /// Its role's name.
    pub role: String,
    /// SHA-256 of the value.
    pub hash: TokenHash,
    /// When it was issued (or last rotated).
    pub created: SystemTime,
    /// When it stops working, if ever.
    pub expires: Option<SystemTime>,
    /// Last accepted use, if any (kept to the second).
    pub last_used: Option<SystemTime>,
    /// Free text.
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_never_debug_printed() {
        let a = TokenValue::generate();
        let b = TokenValue::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(well_formed(a.expose()), "{}", a.expose());
        assert_eq!(a.expose().len(), 4 + 32);
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
        for bad in [
            "",
            "kwt_",
            "kwt_0123",
            "kwx_0123456789abcdef0123456789abcdef",
            "kwt_0123456789ABCDEF0123456789abcdef",
            "kwt_0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
