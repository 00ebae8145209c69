//! How a secret is written into a request: the header a grant injects
//! (its format, or Basic auth), a query parameter, and placeholders
//! swapped for secrets in header values and bytes. Which grants may go
//! where is the upstream filter's decision (`filters::upstream`).

use base64::Engine;
use hyper::header::{self, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret;

use crate::context::Credential;
use crate::rules::Injection;

/// What a query parameter's value keeps as it is: RFC 3986's unreserved
/// characters; every other byte is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The header a header or basic-auth credential injects (replacing any
/// the client sent). `None` for query injection, or when the name or the
/// value cannot be sent in a header (logged, without the value).
pub(crate) fn injected_header(cred: &Credential) -> Option<(HeaderName, HeaderValue)> {
    let secret = cred.secret.expose_secret();
    let (name, value) = match &cred.inject {
        Injection::Header { name, format } => (
            HeaderName::from_bytes(name.as_bytes()).ok(),
            format.replace("{secret}", secret),
        ),
        Injection::Basic { username } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            (Some(header::AUTHORIZATION), format!("Basic {encoded}"))
        }
        Injection::Query { .. } => return None,
    };
    let prepared = name.zip(HeaderValue::from_str(&value).ok());
    match prepared {
        Some((name, mut value)) => {
            value.set_sensitive(true);
            Some((name, value))
        }
        None => {
            tracing::warn!(
                grant = cred.grant,
                "grant's header name or value cannot be sent in HTTP; it is not injected"
            );
            None
        }
    }
}

/// `path_and_query` with `param` set to `value` (percent-encoded), once:
/// any value the client gave it is dropped.
pub(crate) fn set_query_param(path_and_query: &str, param: &str, value: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let encoded = utf8_percent_encode(value, QUERY_VALUE);
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(param))
        .map(str::to_owned)
        .collect();
    parts.push(format!("{param}={encoded}"));
    format!("{path}?{}", parts.join("&"))
}

/// `hay` with every `needle` replaced by `with`.
pub(crate) fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Swaps a placeholder for its secret in every header value (a value that
/// would become invalid is left as it was).
pub(crate) fn replace_in_headers(
    headers: &mut hyper::HeaderMap,
    placeholder: &[u8],
    secret: &[u8],
) {
    for value in headers.values_mut() {
        if value
            .as_bytes()
            .windows(placeholder.len())
            .any(|w| w == placeholder)
            && let Ok(mut v) =
                HeaderValue::from_bytes(&replace_bytes(value.as_bytes(), placeholder, secret))
        {
            v.set_sensitive(true);
            *value = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_set_once_and_encoded() {
        assert_eq!(set_query_param("/a", "key", "v 1"), "/a?key=v%201");
        assert_eq!(
            set_query_param("/a?x=1&key=old", "key", "new"),
            "/a?x=1&key=new"
        );
    }

    /// The encoder this module had before it used `percent-encoding`.
    fn hand_written(value: &str) -> String {
        value
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn query_values_are_encoded_as_before_for_every_character() {
        let every_byte: String = (0u8..0x80).map(char::from).collect();
        for value in [
            every_byte.as_str(),
            "sk-ant-api03_a.b~c/d+e=f&g?h#i%j k",
            "é€😀",
        ] {
            assert_eq!(
                utf8_percent_encode(value, QUERY_VALUE).to_string(),
                hand_written(value),
                "{value:?}"
            );
        }
    }
}
