//! RFC 8785 JSON Canonicalization Scheme: object members sorted by their
//! UTF-16 code units, no whitespace, ECMAScript number and string forms.

use serde_json::Value;

/// Appends the canonical form of `value` to `out`.
pub fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&es_number(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's map iterates in UTF-8 byte order, which differs
            // from UTF-16 order only when characters beyond U+FFFF (4-byte
            // UTF-8, lead byte >= 0xF0) meet U+E000..U+FFFF.
            let astral = map.keys().any(|k| k.bytes().any(|b| b >= 0xF0));
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            if astral {
                members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            } else if !members.is_sorted_by_key(|m| m.0) {
                // Byte order is UTF-16 order without astral characters.
                members.sort_unstable_by_key(|m| m.0);
            }
            out.push('{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(key, out);
                out.push(':');
                write(value, out);
            }
            out.push('}');
        }
    }
}

/// The canonical form of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// JSON string escaping as JCS wants it (which is serde_json's: `\"`,
/// `\\`, `\b\f\n\r\t`, other controls as lowercase `\u00xx`).
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    // A fold without early exit, so the compiler can scan many bytes at a
    // time: most strings need no escaping and are copied whole.
    let needs_escape = s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// ECMAScript's Number::toString for a finite double (RFC 8785 §3.2.2.3).
fn es_number(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return "0".to_owned();
    }
    // Rust's `{:e}` prints the shortest digits that round-trip.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let sign = if f < 0.0 { "-" } else { "" };
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e < 0 {
            format!("-{}", -e)
        } else {
            format!("+{e}")
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    #[allow(clippy::excessive_precision)] // the RFC's own sample value
    fn rfc8785_examples() {
        // RFC 8785 §3.2.3's sample, minus its literal-only members.
        let v = json!({"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                       "string": "\u{20ac}$\u{000F}\u{000a}A'\u{0042}\u{0022}\u{005c}\\\"/",
                       "literals": [null, true, false]});
        assert_eq!(
            to_string(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        assert_eq!(es_number(1e21), "1e+21");
        assert_eq!(es_number(1e20), "100000000000000000000");
        assert_eq!(es_number(-1.5), "-1.5");
        assert_eq!(es_number(1e-7), "1e-7");
        assert_eq!(es_number(0.000001), "0.000001");
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+E000 sorts after U+1F600 in UTF-16 (0xD83D < 0xE000).
        let v = json!({"\u{e000}": 1, "\u{1f600}": 2, "b": 3, "a": 4});
        assert_eq!(
            to_string(&v),
            "{\"a\":4,\"b\":3,\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }
}

/// A JSON object already in canonical form, written member by member for
/// a hot path (the proxy's one record per request) instead of building a
/// [`Value`] and canonicalizing it. Members must be added in ascending key
/// order; keys are plain ASCII names that need no escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalObject {
    out: String,
    last_key: Option<&'static str>,
}

impl Default for CanonicalObject {
    fn default() -> Self {
        Self::new()
    }
}

impl CanonicalObject {
    /// An empty object.
    pub fn new() -> Self {
        Self {
            out: String::with_capacity(256),
            last_key: None,
        }
    }

    fn key(&mut self, key: &'static str) -> &mut String {
        debug_assert!(
            self.last_key.is_none_or(|last| last < key),
            "canonical members out of order: {key:?} after {:?}",
            self.last_key
        );
        debug_assert!(
            key.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        );
        self.out
            .push(if self.last_key.is_none() { '{' } else { ',' });
        self.last_key = Some(key);
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        &mut self.out
    }

    /// A string member.
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        write_str(value, self.key(key));
        self
    }

    /// A string member, or `null`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    /// A `null` member.
    pub fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key).push_str("null");
        self
    }

    /// An integer member.
    pub fn u64(&mut self, key: &'static str, value: u64) -> &mut Self {
        use std::fmt::Write as _;
        let _ = write!(self.key(key), "{value}");
        self
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(&mut self, key: &'static str, values: &[S]) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(value.as_ref(), out);
        }
        out.push(']');
        self
    }

    /// A nested object, or `null`.
    pub fn object(&mut self, key: &'static str, value: Option<CanonicalObject>) -> &mut Self {
        match value {
            Some(value) => {
                let inner = value.finish();
                self.key(key).push_str(&inner);
                self
            }
            None => self.null(key),
        }
    }

    /// The canonical text.
    pub fn finish(mut self) -> String {
        if self.last_key.is_none() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}
