//! Runner claims and their canonical bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::failure::{AuthFailure, Check};

/// The claims keyward knows by name. Others are kept as they came (and, once
/// verified, may be matched like these).
pub const KNOWN_CLAIMS: &[&str] = &[
    "provider",
    "repository",
    "workflow",
    "run_id",
    "run_attempt",
    "ref",
    "sha",
    "actor",
    "job",
    "runner_name",
];

/// At most this many claims in one object.
pub const MAX_CLAIMS: usize = 64;
/// At most this many bytes in one claim's name.
pub const MAX_NAME_BYTES: usize = 64;
/// At most this many bytes in one claim's value.
pub const MAX_VALUE_BYTES: usize = 1024;

/// A runner's claims: claim name to string value. Only ever built from a
/// verified source (an HMAC signature or an OIDC token that passed every
/// check), so policy may trust them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerClaims(BTreeMap<String, String>);

impl RunnerClaims {
    /// A claim's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every claim, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// As a JSON object (for policy matching and the decision record).
    pub fn to_json(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    }

    pub(crate) fn insert(&mut self, name: &str, value: String) {
        self.0.insert(name.to_owned(), value);
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// Checks the shape the canonical form relies on: an object of at most
    /// [`MAX_CLAIMS`] members, names of 1 to [`MAX_NAME_BYTES`] bytes of
    /// `A-Z a-z 0-9 _ . -`, values strings of at most [`MAX_VALUE_BYTES`].
    pub fn from_json(value: &Value) -> Result<Self, AuthFailure> {
        let malformed = |detail: String| AuthFailure::new(Check::Malformed, detail);
        let Value::Object(map) = value else {
            return Err(malformed("claims must be a JSON object".to_owned()));
        };
        if map.len() > MAX_CLAIMS {
            return Err(malformed(format!(
                "{} claims; at most {MAX_CLAIMS} are accepted",
                map.len()
            )));
        }
        let mut claims = BTreeMap::new();
        for (name, value) in map {
            if name.is_empty()
                || name.len() > MAX_NAME_BYTES
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(malformed(format!(
                    "claim name {name:?} must be 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 _ . -"
                )));
            }
            let Value::String(text) = value else {
                return Err(malformed(format!("claim {name:?} must be a string")));
            };
            if text.len() > MAX_VALUE_BYTES {
                return Err(malformed(format!(
                    "claim {name:?} is longer than {MAX_VALUE_BYTES} bytes"
                )));
            }
            claims.insert(name.clone(), text.clone());
        }
        Ok(Self(claims))
    }

    /// The bytes an HMAC signature covers: the RFC 8785 (JCS) form of the
    /// claims object, UTF-8. With ASCII names and string values only, that is
    /// members sorted by name bytewise, no whitespace, strings escaped as
    /// JSON requires (`\"`, `\\`, `\b \f \n \r \t`, other controls as
    /// `\u00xx` in lowercase hex, everything else as its UTF-8 bytes).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        keyward_evidence::canonical_json(&Value::Object(self.to_json())).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_sort_names_and_escape_like_jcs() {
        let claims = RunnerClaims::from_json(&serde_json::json!({
            "sha": "abc", "repository": "acme/app", "ref": "refs/heads/main",
            "actor": "a\"b\\c\n\u{1}é"
        }))
        .unwrap();
        assert_eq!(
            String::from_utf8(claims.canonical_bytes()).unwrap(),
            "{\"actor\":\"a\\\"b\\\\c\\n\\u0001é\",\"ref\":\"refs/heads/main\",\"repository\":\"acme/app\",\"sha\":\"abc\"}"
        );
    }

    #[test]
    fn shapes_that_could_canonicalise_ambiguously_are_refused() {
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"run_id": 7}),
            serde_json::json!({"ré": "x"}),
            serde_json::json!({"": "x"}),
            serde_json::json!({"a": {"b": "c"}}),
        ] {
            let err = RunnerClaims::from_json(&bad).unwrap_err();
            assert_eq!(err.check, Check::Malformed, "{bad}");
        }
    }
}
