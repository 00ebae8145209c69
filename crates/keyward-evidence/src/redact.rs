//! Redaction of evidence payloads: a record holds the request and the
//! response, never a secret, bearer token or run token.

use aho_corasick::{AhoCorasick, MatchKind};
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
    // keyward's own API tokens.
    "kwt_",
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

/// Bytes that make up a token: ASCII alphanumerics and `_ - . = + /`.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || c == b'_'
            || c == b'-'
            || c == b'.'
            || c == b'='
            || c == b'+'
            || c == b'/';
        b += 1;
    }
    table
};

/// `s` with every credential-looking run replaced, or `None` when there is
/// none. `is_secret` sees each token-like run of 16 or more characters
/// (run tokens, known secret values).
fn redact_str(s: &str, is_secret: &dyn Fn(&str) -> bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    // Token runs, one at a time: each starts at a boundary (token bytes
    // are ASCII, so also at a character boundary).
    while i < bytes.len() {
        if !TOKEN[bytes[i] as usize] {
            i += 1;
            continue;
        }
        let run_end = run_end(bytes, i);
        let rest = &s[i..];
        // (where the redaction starts, where it ends)
        let hit = if !STARTS[bytes[i] as usize] {
            None
        } else if let Some(scheme) = SCHEMES
            .iter()
            .find(|p| p.as_bytes()[0] == bytes[i] && rest.starts_with(**p))
        {
            // `Bearer <token>`: the word stays, the token after it goes.
            let token_start = i + scheme.len();
            let token_end = run_end_or_none(bytes, token_start);
            token_end.map(|e| (token_start, e))
        } else {
            TOKEN_PREFIXES
                .iter()
                .find(|p| {
                    p.as_bytes()[0] == bytes[i] && rest.starts_with(**p) && run_end > i + p.len()
                })
                .map(|_| (i, run_end))
        };
        let hit = hit.or_else(|| known_value(s, i, run_end, is_secret));
        match hit {
            Some((from, to)) => {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..from]);
                o.push_str(REDACTED);
                copied = to;
                i = to;
            }
            None => i = run_end,
        }
    }
    out.map(|mut o| {
        o.push_str(&s[copied..]);
        o
    })
}

/// The run `[start, end)`, or the first piece of it between separators
/// (`key=<value>` and `/path/<value>/more` glue a value into a longer
/// run), when `is_secret` recognises it.
fn known_value(
    s: &str,
    start: usize,
    end: usize,
    is_secret: &dyn Fn(&str) -> bool,
) -> Option<(usize, usize)> {
    if end - start >= 16 && is_secret(&s[start..end]) {
        return Some((start, end));
    }
    let mut from = start;
    for piece in s[start..end].split(['=', '/', '.', '+']) {
        let to = from + piece.len();
        if piece.len() >= 16 && to - from < end - start && is_secret(piece) {
            return Some((from, to));
        }
        from = to + 1;
    }
    None
}

/// The end of the token run starting at `start`.
fn run_end(bytes: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < bytes.len() && TOKEN[bytes[end] as usize] {
        end += 1;
    }
    end
}

/// The end of a non-empty token run starting at `start`.
fn run_end_or_none(bytes: &[u8], start: usize) -> Option<usize> {
    let end = run_end(bytes, start);
    (end > start).then_some(end)
}

/// The bytes (either case) a sensitive name starts with.
const KEY_STARTS: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < SENSITIVE_KEYS.len() {
        let first = SENSITIVE_KEYS[i][0];
        table[first.to_ascii_lowercase() as usize] = true;
        table[first.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    table
};

fn sensitive_key(key: &str) -> bool {
    let k = key.as_bytes();
    (0..k.len()).any(|i| {
        KEY_STARTS[k[i] as usize]
            && SENSITIVE_KEYS.iter().any(|s| {
                s[0] == k[i].to_ascii_lowercase()
                    && k[i..].len() >= s.len()
                    && k[i..i + s.len()].eq_ignore_ascii_case(s)
            })
    })
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

/// Known values shorter than this are not searched for: they would match
/// ordinary text.
pub const MIN_KNOWN_LEN: usize = 4;

/// Replaces every occurrence of each `known` value (secret values the
/// daemon holds) inside the strings of `value`, wherever it sits in them,
/// with [`REDACTED`]. Run it before [`redact`], which could otherwise cut a
/// known value in pieces that no longer match. Returns how many strings
/// changed. For many values or many records, build a [`KnownSecrets`] once.
pub fn redact_known(value: &mut Value, known: &[&str]) -> usize {
    KnownSecrets::new(known.iter().copied()).redact(value)
}

/// Known secret values (at least [`MIN_KNOWN_LEN`] bytes), searched for in
/// one pass over each string however many there are: the daemon redacts
/// every record against the values of all live runs.
pub struct KnownSecrets {
    matcher: Matcher,
}

enum Matcher {
    /// No value long enough.
    Nothing,
    /// Every value in one pass.
    Automaton(AhoCorasick),
    /// Each value in turn, should the automaton not build (a set too large
    /// for it): slower, never less redacted.
    OneByOne(Vec<String>),
}

impl KnownSecrets {
    /// A matcher for `values`; shorter ones are left out.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let values: Vec<&str> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_KNOWN_LEN)
            .collect();
        let matcher = if values.is_empty() {
            Matcher::Nothing
        } else {
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&values)
            {
                Ok(automaton) => Matcher::Automaton(automaton),
                Err(_) => Matcher::OneByOne(values.iter().map(|v| (*v).to_owned()).collect()),
            }
        };
        Self { matcher }
    }

    /// [`redact_known`] with these values.
    pub fn redact(&self, value: &mut Value) -> usize {
        match &self.matcher {
            Matcher::Nothing => 0,
            _ => redact_strings(value, &|s| self.matcher.replace(s)),
        }
    }
}

impl Matcher {
    /// `s` with every known value replaced, if it holds one.
    fn replace(&self, s: &str) -> Option<String> {
        match self {
            Matcher::Nothing => None,
            Matcher::Automaton(automaton) => {
                if !automaton.is_match(s) {
                    return None;
                }
                let mut out = String::with_capacity(s.len());
                automaton.replace_all_with(s, &mut out, |_, _, out| {
                    out.push_str(REDACTED);
                    true
                });
                Some(out)
            }
            Matcher::OneByOne(values) => {
                let mut out: Option<String> = None;
                for v in values {
                    let current = out.as_deref().unwrap_or(s);
                    if current.contains(v.as_str()) {
                        out = Some(current.replace(v.as_str(), REDACTED));
                    }
                }
                out
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Matcher::Nothing => 0,
            Matcher::Automaton(automaton) => automaton.patterns_len(),
            Matcher::OneByOne(values) => values.len(),
        }
    }
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets")
            .field("values", &self.matcher.len())
            .finish()
    }
}

/// Replaces each string of `value` that `replace` changes; how many did.
fn redact_strings(value: &mut Value, replace: &dyn Fn(&str) -> Option<String>) -> usize {
    match value {
        Value::String(s) => match replace(s) {
            Some(out) => {
                *s = out;
                1
            }
            None => 0,
        },
        Value::Array(items) => items.iter_mut().map(|v| redact_strings(v, replace)).sum(),
        Value::Object(map) => map.values_mut().map(|v| redact_strings(v, replace)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of searching redact the same: the one-pass automaton and
    /// the fallback used when it cannot be built.
    #[test]
    fn the_fallback_redacts_what_the_automaton_does() {
        let values = [
            "s3cr3t-one-0123",
            "s3cr3t-one-0123-longer",
            "other-value-77",
        ];
        let text = "a s3cr3t-one-0123-longer b other-value-77 s3cr3t-one-0123 c";
        let fallback = Matcher::OneByOne(values.iter().map(|v| (*v).to_owned()).collect());
        let automaton = KnownSecrets::new(values);
        assert!(matches!(automaton.matcher, Matcher::Automaton(_)));
        for matcher in [&automaton.matcher, &fallback] {
            let out = matcher.replace(text).unwrap();
            assert!(values.iter().all(|v| !out.contains(v)), "{out}");
            assert!(out.starts_with("a [REDACTED]"), "{out}");
        }
        assert_eq!(fallback.replace("nothing known"), None);
    }
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

    #[test]
    fn known_values_are_replaced_wherever_they_sit() {
        let secret = "p@ss w0rd!";
        let mut v = json!({
            "target": format!("psql postgres://u:{secret}@db/app"),
            "context": {"list": [format!("x{secret}x"), "fine"]},
            "short": "abc",
        });
        let n = redact_known(&mut v, &[secret, "abc"]);
        let text = v.to_string();
        assert!(!text.contains(secret), "{text}");
        assert_eq!(n, 2, "{text}");
        assert!(text.contains("postgres://u:[REDACTED]@db/app"), "{text}");
        // Too short to search for.
        assert!(text.contains("\"short\":\"abc\""), "{text}");
    }

    #[test]
    fn tokens_are_found_between_any_characters() {
        let none = |_: &str| false;
        for (input, expected) in [
            ("é ghp_abc é", "é [REDACTED] é"),
            (
                "curl -H 'Authorization: kwt_0123456789abcdef0123456789abcdef' x",
                "curl -H 'Authorization: [REDACTED]' x",
            ),
            ("«Basic dXNlcjpwYXNz»", "«Basic [REDACTED]»"),
            ("x=sk-live-9;y", "x=sk-live-9;y"),
            ("(sk-live-9)", "([REDACTED])"),
            ("token abc.def", "token [REDACTED]"),
            ("Bearer  spaced", "Bearer  spaced"),
            ("ghp_", "ghp_"),
            ("plain words only", "plain words only"),
        ] {
            let got = redact_str(input, &none).unwrap_or_else(|| input.to_owned());
            assert_eq!(got, expected, "{input}");
        }
        let known = |s: &str| s == "0123456789abcdef";
        assert_eq!(
            redact_str("k: 0123456789abcdef!", &known).as_deref(),
            Some("k: [REDACTED]!")
        );
        assert_eq!(
            redact_str("curl -H x-key=0123456789abcdef /", &known).as_deref(),
            Some("curl -H x-key=[REDACTED] /")
        );
        assert_eq!(
            redact_str("/p/0123456789abcdef/x.0123456789abcdef+y", &known).as_deref(),
            Some("/p/[REDACTED]/x.[REDACTED]+y")
        );
    }
}
