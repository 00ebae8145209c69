//! Redaction of evidence payloads: a record holds the request and the
//! response, never a secret, bearer token or run token.

use serde_json::Value;

/// The replacement text.
pub const REDACTED: &str = "[REDACTED]";

/// Member names whose values are always redacted (ASCII case-insensitive
/// substring match).
const SENSITIVE_KEYS: &[&[u8]] = &[
    b"token",
    b"secret",
    b"password",
    b"passwd",
    b"passphrase",
    b"authorization",
    b"api_key",
    b"apikey",
    b"api-key",
    b"credential",
    b"cookie",
    b"private_key",
];

/// Well-known credential formats: the prefix and the token after it are
/// replaced wherever they occur in a string (`Bearer ` and `Basic ` keep
/// their scheme word).
const TOKEN_PREFIXES: &[&str] = &[
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
const SCHEMES: &[&str] = &["Bearer ", "bearer ", "Basic ", "basic ", "token "];

/// The bytes a scheme or a known prefix starts with: one lookup rules out
/// most positions before any prefix is compared.
const STARTS: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < SCHEMES.len() {
        table[SCHEMES[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < TOKEN_PREFIXES.len() {
        table[TOKEN_PREFIXES[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    table
};

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'=' | b'+' | b'/')
}

/// `s` with every credential-looking run replaced, or `None` when there is
/// none. `is_secret` sees each token-like run of 16 or more characters
/// (run tokens, known secret values).
fn redact_str(s: &str, is_secret: &dyn Fn(&str) -> bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at_boundary = i == 0 || !is_token_byte(bytes[i - 1]);
        if !at_boundary {
            i += 1;
            continue;
        }
        let rest = &s[i..];
        // (where the redaction starts, where the token starts)
        let hit = if !STARTS[bytes[i] as usize] {
            None
        } else if let Some(scheme) = SCHEMES.iter().find(|p| rest.starts_with(**p)) {
            Some((i + scheme.len(), i + scheme.len()))
        } else {
            TOKEN_PREFIXES
                .iter()
                .find(|p| rest.starts_with(**p))
                .map(|p| (i, i + p.len()))
        };
        let mut end = i;
        while end < bytes.len() && is_token_byte(bytes[end]) {
            end += 1;
        }
        let redact_from = match hit {
            Some((from, token_start)) => {
                let mut e = token_start;
                while e < bytes.len() && is_token_byte(bytes[e]) {
                    e += 1;
                }
                end = e;
                (e > token_start).then_some(from)
            }
            None => (end - i >= 16 && is_secret(&s[i..end])).then_some(i),
        };
        if let Some(from) = redact_from {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[copied..from]);
            o.push_str(REDACTED);
            copied = end;
        }
        i = end.max(i + 1);
        // Skip to the next boundary candidate (UTF-8 safe: only ASCII moves).
        while i < bytes.len() && !s.is_char_boundary(i) {
            i += 1;
        }
    }
    out.map(|mut o| {
        o.push_str(&s[copied..]);
        o
    })
}

fn sensitive_key(key: &str) -> bool {
    let k = key.as_bytes();
    SENSITIVE_KEYS
        .iter()
        .any(|s| k.len() >= s.len() && k.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s)))
}

/// Redacts `value` in place: values of sensitive member names, well-known
/// credential formats anywhere inside strings, and any token-like run
/// `is_secret` recognises (run tokens, known secret values). Returns how
/// many redactions were made.
pub fn redact(value: &mut Value, is_secret: &dyn Fn(&str) -> bool) -> usize {
    match value {
        Value::String(s) => match redact_str(s, is_secret) {
            Some(r) => {
                *s = r;
                1
            }
            None => 0,
        },
        Value::Array(items) => items.iter_mut().map(|v| redact(v, is_secret)).sum(),
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| {
                if sensitive_key(k) && !v.is_null() {
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
        let known = "s3cr3t-value-0123456789";
        let mut v = json!({
            "target": "api.github.com/user",
            "context": {"GITHUB_TOKEN": "abc", "note": "Bearer xyz.abc", "pat": "ghp_123", "n": 3,
                        "known": format!("prefix {known} suffix")},
            "list": ["fine", "run curl -H 'Authorization: Bearer sk-live-1' https://x", "AKIAABCDEFGHIJKLMNOP"],
            "askew": "task-force and ghp_ are words; desk-top",
        });
        let n = redact(&mut v, &|s| s == known);
        let text = v.to_string();
        for leaked in [
            "abc",
            "xyz",
            "ghp_123",
            "sk-live-1",
            known,
            "AKIAABCDEFGHIJKLMNOP",
        ] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert_eq!(n, 6, "{text}");
        assert!(text.contains("api.github.com/user") && text.contains("fine"));
        assert!(text.contains("prefix [REDACTED] suffix"), "{text}");
        assert!(text.contains("Bearer [REDACTED]"), "{text}");
        assert!(
            text.contains("task-force and ghp_ are words; desk-top"),
            "{text}"
        );
    }
}
