//! HMAC mode: `runner_auth = {claims, algorithm: "HMAC-SHA256", key_id,
//! signature}`, the signature being hex HMAC-SHA256 of the claims'
//! canonical bytes.

use std::fmt;

use aws_lc_rs::hmac;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::claims::RunnerClaims;
use crate::failure::{AuthFailure, Check};

/// The `algorithm` of an HMAC envelope.
pub const HMAC_ALGORITHM: &str = "HMAC-SHA256";
/// The smallest key accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// The shared runner key and its id.
pub struct HmacKey {
    key_id: String,
    key: hmac::Key,
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacKey")
            .field("key_id", &self.key_id)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// The key bytes a key text stands for: the text without surrounding
/// whitespace, hex-decoded when it is hex (an even number of `0-9a-fA-F`),
/// else its UTF-8 bytes. At least [`MIN_KEY_BYTES`].
pub fn key_bytes(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let trimmed = text.trim();
    let bytes =
        Zeroizing::new(hex::decode(trimmed).unwrap_or_else(|_| trimmed.as_bytes().to_vec()));
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "a runner HMAC key needs at least {MIN_KEY_BYTES} bytes (this one has {}); \
             create one with `openssl rand -hex 32`",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl HmacKey {
    /// A key from its text (see [`key_bytes`]) and id.
    pub fn new(key_id: &str, text: &str) -> Result<Self, String> {
        let bytes = key_bytes(text)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The configured key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Hex HMAC-SHA256 of the claims' canonical bytes: what a signer sends.
    pub fn sign(&self, claims: &RunnerClaims) -> String {
        hex::encode(hmac::sign(&self.key, &claims.canonical_bytes()))
    }

    /// Checks an HMAC envelope; the claims on success.
    pub(crate) fn verify(&self, auth: &Map<String, Value>) -> Result<RunnerClaims, AuthFailure> {
        let field = |name: &str| auth.get(name).and_then(Value::as_str);
        let key_id = field("key_id")
            .ok_or_else(|| AuthFailure::new(Check::KeyId, "runner_auth has no key_id"))?;
        if key_id != self.key_id {
            return Err(AuthFailure::new(
                Check::KeyId,
                format!(
                    "key_id {key_id:?} is not the configured auth.runner_key_id {:?}",
                    self.key_id
                ),
            ));
        }
        let claims = auth
            .get("claims")
            .ok_or_else(|| AuthFailure::new(Check::Malformed, "runner_auth has no claims"))?;
        let claims = RunnerClaims::from_json(claims)?;
        let signature = field("signature")
            .and_then(|s| hex::decode(s).ok())
            .filter(|s| s.len() == 32)
            .ok_or_else(|| {
                AuthFailure::new(
                    Check::Signature,
                    "signature must be 64 hex digits (HMAC-SHA256)",
                )
            })?;
        // Constant time: aws-lc's verify compares the whole tag.
        hmac::verify(&self.key, &claims.canonical_bytes(), &signature).map_err(|_| {
            AuthFailure::new(
                Check::Signature,
                "the HMAC-SHA256 signature does not match the claims",
            )
        })?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector in the README, as Python's `json.dumps(claims,
    /// sort_keys=True, separators=(",", ":"), ensure_ascii=False)` signs it.
    #[test]
    fn readme_test_vector() {
        let key = HmacKey::new(
            "default",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .unwrap();
        let claims = RunnerClaims::from_json(&serde_json::json!({
            "repository": "acme/app", "ref": "refs/heads/main", "actor": "Zoë \"q\"\n"
        }))
        .unwrap();
        assert_eq!(
            claims.canonical_bytes(),
            "{\"actor\":\"Zoë \\\"q\\\"\\n\",\"ref\":\"refs/heads/main\",\"repository\":\"acme/app\"}"
                .as_bytes()
        );
        assert_eq!(
            key.sign(&claims),
            "cd1cd3233e5a1cfe35c12f4fa7e4ec258479acaabe9921bbcc014b0046b24976"
        );
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(
            HmacKey::new("k", "abcd")
                .unwrap_err()
                .contains("at least 32 bytes")
        );
        let key = HmacKey::new("k", &"ab".repeat(32)).unwrap();
        assert!(!format!("{key:?}").contains("abab"));
    }
}
