//! The plaintext inside each snapshot: a versioned JSON document.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Document format version.
pub(crate) const DOCUMENT_VERSION: u32 = 1;

/// A secret's value: zeroized on drop, `[REDACTED]` in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub(crate) fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// One stored secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSecret {
    pub value: SecretValue,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The whole vault content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Document {
    pub version: u32,
    pub vault_id: String,
    /// Key of the HMAC that fingerprints values; lives only inside the
    /// encrypted document so fingerprints cannot be brute-forced offline
    /// from `secret list` output alone.
    pub fingerprint_key: SecretValue,
    #[serde(default)]
    pub secrets: BTreeMap<String, StoredSecret>,
}

impl Document {
    pub(crate) fn new() -> Self {
        let mut id = [0u8; 16];
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self {
            version: DOCUMENT_VERSION,
            vault_id: hex::encode(id),
            fingerprint_key: SecretValue::new(hex::encode(key.as_ref())),
            secrets: BTreeMap::new(),
        }
    }

    /// First 8 hex digits of HMAC-SHA256(fingerprint_key, value).
    pub(crate) fn fingerprint(&self, value: &SecretValue) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.fingerprint_key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(value.expose().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    pub(crate) fn to_json(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(self).expect("a document always serializes"))
    }

    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let doc: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("the decrypted content is not a vault document ({e})"))?;
        if doc.version != DOCUMENT_VERSION {
            return Err(format!(
                "document version {} is not supported by this keyward (expects {DOCUMENT_VERSION}); upgrade keyward",
                doc.version
            ));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let mut doc = Document::new();
        doc.secrets.insert(
            "a".into(),
            StoredSecret {
                value: SecretValue::new("hunter2-value".into()),
                description: String::new(),
                created_at: String::new(),
                updated_at: String::new(),
            },
        );
        let dbg = format!("{doc:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains(doc.fingerprint_key.expose()), "{dbg}");
    }

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let doc = Document::new();
        let v = SecretValue::new("x".into());
        assert_eq!(doc.fingerprint(&v), doc.fingerprint(&v));
        assert_eq!(doc.fingerprint(&v).len(), 8);
        let other = Document::new();
        assert_ne!(doc.fingerprint(&v), other.fingerprint(&v));
    }

    #[test]
    fn round_trip_and_version_check() {
        let doc = Document::new();
        let back = Document::from_json(&doc.to_json()).unwrap();
        assert_eq!(back.vault_id, doc.vault_id);
        let err = Document::from_json(br#"{"version":9,"vault_id":"x","fingerprint_key":"k"}"#)
            .unwrap_err();
        assert!(err.contains("version 9"), "{err}");
    }
}
