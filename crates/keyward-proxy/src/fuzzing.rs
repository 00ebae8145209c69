//! Entry points for the fuzz targets in `fuzz/`: the parsers and
//! rewriters that see a child's or an upstream's bytes, reachable without
//! a running proxy. Not an API (hidden from the docs); it follows the code
//! it reaches.

use hyper::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::scrub::{Scrubbed, Scrubber};

/// Relays WebSocket frames from `from` (the server) to `to` (the client),
/// scrubbing them as the proxy does.
pub async fn relay_scrubbed<R, W>(from: R, to: W, scrubber: &Scrubber) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    crate::websocket::relay_scrubbed(from, to, scrubber).await
}

/// `hay` with every `placeholder` swapped for `secret`, as request bodies
/// are substituted.
pub fn substitute_body(hay: &[u8], placeholder: &[u8], secret: &[u8]) -> Vec<u8> {
    crate::inject::replace_bytes(hay, placeholder, secret)
}

/// Swaps `placeholder` for `secret` in every header value, as the request
/// path does.
pub fn substitute_headers(headers: &mut HeaderMap, placeholder: &[u8], secret: &[u8]) {
    crate::inject::replace_in_headers(headers, placeholder, secret);
}

/// `path_and_query` with `param` set to `value` (percent-encoded), as query
/// injection does.
pub fn set_query_param(path_and_query: &str, param: &str, value: &str) -> String {
    crate::inject::set_query_param(path_and_query, param, value)
}
