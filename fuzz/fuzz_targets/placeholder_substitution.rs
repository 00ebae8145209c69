//! Placeholder substitution as the request path does it: in a body, in
//! header values, and query injection. Bodies match a plain replace-all;
//! a header value is either wholly substituted or left as it was; an
//! injected query parameter appears once, last, percent-encoded.
#![no_main]

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use keyward_fuzz::{Input, contains};
use keyward_proxy::fuzzing::{set_query_param, substitute_body, substitute_headers};
use libfuzzer_sys::fuzz_target;

/// Replace-all over bytes, through `str::replace` on a byte-per-char text.
fn reference(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let text = |b: &[u8]| b.iter().map(|&c| char::from(c)).collect::<String>();
    text(hay)
        .replace(&text(needle), &text(with))
        .chars()
        .map(|c| c as u8)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let placeholder_len = usize::from(input.byte() % 48) + 1;
    let placeholder = input.bytes(placeholder_len).to_vec();
    let secret_len = usize::from(input.byte() % 64);
    let secret = input.bytes(secret_len).to_vec();
    if placeholder.is_empty() {
        return;
    }
    let hay = input.0;

    // Bodies.
    let body = substitute_body(hay, &placeholder, &secret);
    assert!(
        body == reference(hay, &placeholder, &secret),
        "body substitution"
    );

    // Header values: the hay cut at newlines, one header each.
    let mut headers = HeaderMap::new();
    for (i, line) in hay.split(|&b| b == b'\n').take(16).enumerate() {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            let name = HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
            headers.append(name, value);
        }
    }
    let before = headers.clone();
    substitute_headers(&mut headers, &placeholder, &secret);
    for (name, old) in &before {
        let new = &headers[name];
        let replaced = reference(old.as_bytes(), &placeholder, &secret);
        let substituted = new.as_bytes() == replaced.as_slice();
        let untouched = new == old && HeaderValue::from_bytes(&replaced).is_err();
        assert!(substituted || untouched, "header {name} half substituted");
        if contains(old.as_bytes(), &placeholder) && substituted {
            assert!(
                new.is_sensitive(),
                "a substituted header is not marked sensitive"
            );
        }
    }

    // Query injection: the path and query a child sent, a parameter name
    // from the grant, the secret as its value.
    let Ok(path_and_query) = hyper::http::uri::PathAndQuery::try_from(hay) else {
        return;
    };
    let Ok(param) = std::str::from_utf8(&placeholder) else {
        return;
    };
    let value = String::from_utf8_lossy(&secret);
    if param.contains(['&', '=', '?', '#']) {
        return;
    }
    let out = set_query_param(path_and_query.as_str(), param, &value);
    let (path, query) = out.split_once('?').expect("a query is set");
    let sent = path_and_query.as_str();
    assert_eq!(path, sent.split_once('?').map_or(sent, |(p, _)| p));
    let pairs: Vec<&str> = query.split('&').collect();
    let last = pairs.last().expect("at least the injected pair");
    let (name, encoded) = last.split_once('=').expect("name=value");
    assert_eq!(name, param);
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "the injected value is not percent-encoded: {encoded:?}"
    );
    assert!(
        pairs[..pairs.len() - 1]
            .iter()
            .all(|kv| kv.split('=').next() != Some(param)),
        "a child-sent {param} parameter survived next to the injected one"
    );
});
