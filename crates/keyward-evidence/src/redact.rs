//! Redaction of evidence payloads: a record holds the request and the
//! response, never a secret, bearer token or run token.

use serde_json::Value;

/// The replacement text.
pub const REDACTED: &str = "[REDACTED]";

/// Member names whose values are always redacted (case-insensitive
/// substring match).
const SENSITIVE_KEYS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "credential",
    "cookie",
    "private_key",
];

/// Prefixes of well-known credential formats.
const SECRET_PREFIXES: &[&str] = &[
    "Bearer ",
    "bearer ",
    "Basic ",
    "basic ",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "sk-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "AKIA",
    "ASIA",
    "npm_",
    "pypi-",
];

/// Redacts `value` in place: sensitive member names, well-known credential
/// formats, and any string `is_secret` recognises (run tokens, known
/// secret values). Returns how many values were redacted.
pub fn redact(value: &mut Value, is_secret: &dyn Fn(&str) -> bool) -> usize {
    match value {
        Value::String(s) if SECRET_PREFIXES.iter().any(|p| s.starts_with(p)) || is_secret(s) => {
            *s = REDACTED.to_owned();
            1
        }
        Value::Array(items) => items.iter_mut().map(|v| redact(v, is_secret)).sum(),
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                if SENSITIVE_KEYS.iter().any(|s| lower.contains(s)) && !v.is_null() {
                    *v = Value::String(REDACTED.to_owned());
                    1
                } else {
                    redact(v, is_secret)
                }
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_names_formats_and_known_values_are_redacted() {
        let mut v = json!({
            "target": "api.github.com/user",
            "context": {"GITHUB_TOKEN": "abc", "note": "Bearer xyz", "pat": "ghp_123", "n": 3,
                        "known": "s3cr3t-value"},
            "list": ["fine", "sk-live-1"],
        });
        let n = redact(&mut v, &|s| s == "s3cr3t-value");
        assert_eq!(n, 5);
        let text = v.to_string();
        for leaked in ["abc", "xyz", "ghp_123", "sk-live-1", "s3cr3t-value"] {
            assert!(!text.contains(leaked), "{text}");
        }
        assert!(text.contains("api.github.com/user") && text.contains("fine"));
    }
}
