//! upstream_request_filter: what goes upstream. Placeholders are swapped
//! for secrets and credentials injected only toward the destinations their
//! grants name; hop-by-hop headers (the run token among them) are removed;
//! request bodies are buffered only where a placeholder may need swapping.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Uri};
use secrecy::ExposeSecret;

use crate::body::{BoxError, ProxyBody};
use crate::context::{RunContext, Scope};
use crate::inject::{replace_bytes, replace_in_headers, set_query_param};
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, RefusedBody, Rule};
use crate::request_ctx::RequestCtx;
use crate::rules::Injection;
use crate::run_token::{RunToken, TokenGuard};

/// The request as it goes upstream: hop-by-hop headers out, secrets in
/// where their grants allow (which sets `ctx.injected` and the record's
/// `injected`), the upstream URL, and the body (placeholders swapped, the
/// run token guarded).
pub(crate) async fn filter(
    proxy: &Proxy,
    ctx: &mut RequestCtx<'_>,
    mut parts: Parts,
    body: Incoming,
) -> Result<Request<ProxyBody>, Refusal> {
    let (run, target) = (ctx.run, ctx.target);
    // Hop-by-hop headers go first, so a `Connection` header cannot name
    // (and so remove) what is injected.
    strip_hop_by_hop(&mut parts.headers);
    if ctx.scopes.contains(&Scope::Allowed) {
        // The destination's own spelling of its name, whatever case,
        // trailing dots or leading zeros the client used: a front end
        // routing on the exact Host string sees the grant's host.
        parts.headers.remove(header::HOST);
    }
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    ctx.injected = swap_and_inject(
        run,
        &ctx.scopes,
        target,
        &mut parts.headers,
        &mut path_and_query,
    )?;
    // Toward a grant's host, ask for an uncompressed response: it is
    // scrubbed as it streams, without decoding.
    if run
        .credentials
        .iter()
        .any(|c| c.names(&target.host, target.port))
    {
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    if run.scrubber.is_some() && crate::grpc::is_grpc(&parts.headers) {
        crate::grpc::ask_uncompressed(&mut parts.headers);
    }
    ask_to_switch(ctx, &mut parts.headers)?;
    // The upstream connection negotiates its own version (ALPN); the
    // client's (h2 or HTTP/1.1 with the proxy) does not carry over.
    parts.version = hyper::Version::HTTP_11;
    parts.uri = Uri::builder()
        .scheme(target.scheme())
        .authority(ctx.authority.as_str())
        .path_and_query(path_and_query.as_str())
        .build()
        .map_err(|e| {
            Refusal::new(
                Rule::BadUrl,
                format!("keyward cannot build the upstream URL: {e}\n"),
            )
        })?;
    let (body, body_injected) = request_body(
        run,
        &ctx.scopes,
        &target.host,
        proxy.options.max_substitution_body,
        &mut parts,
        body,
    )
    .await?;
    for grant in body_injected {
        if !ctx.injected.contains(&grant) {
            ctx.injected.push(grant);
        }
    }
    ctx.event.injected = ctx.injected.iter().map(|g| (*g).to_owned()).collect();
    Ok(Request::from_parts(parts, body))
}

/// Passes on a request to switch protocols. One that carries a secret may
/// switch only to WebSocket, whose frames keyward scrubs.
fn ask_to_switch(ctx: &RequestCtx<'_>, headers: &mut hyper::HeaderMap) -> Result<(), Refusal> {
    let upgrade = &ctx.upgrade;
    if let Some(protocol) = &upgrade.protocol {
        if !ctx.injected.is_empty() && !upgrade.websocket {
            return Err(Refusal::new(
                Rule::UpgradeRefused,
                format!(
                    "keyward refused this upgrade to {:?}: a handshake that carries a secret may only upgrade to WebSocket, whose frames keyward scrubs\n",
                    String::from_utf8_lossy(protocol.as_bytes())
                ),
            ));
        }
        headers.insert(header::UPGRADE, protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if upgrade.scrub_frames {
        // Compressed frames could not be scrubbed.
        headers.remove("sec-websocket-extensions");
    }
    Ok(())
}

/// Swaps the placeholders in the request's headers and URL for the
/// secrets of the grants that may go to `target`, and injects those
/// grants' credentials. A placeholder of a grant that may not go there
/// refuses the request. Returns the grants whose secrets went in.
fn swap_and_inject<'r>(
    run: &'r RunContext,
    scopes: &[Scope],
    target: &Target,
    headers: &mut hyper::HeaderMap,
    path_and_query: &mut String,
) -> Result<Vec<&'r str>, Refusal> {
    let mut injected: Vec<&str> = Vec::new();
    for (cred, scope) in run.credentials.iter().zip(scopes) {
        let Some(placeholder) = &cred.placeholder else {
            continue;
        };
        let in_headers = headers.values().any(|v| {
            v.as_bytes()
                .windows(placeholder.len())
                .any(|w| w == placeholder.as_bytes())
        });
        let in_uri = path_and_query.contains(placeholder.as_str());
        if !(in_headers || in_uri) {
            continue;
        }
        if *scope != Scope::Allowed {
            return Err(Refusal::new(
                Rule::PlaceholderWrongHost,
                format!(
                    "keyward refused this request: it carries the placeholder of grant {}, whose secret may not go to {}:{}\n",
                    cred.grant, target.host, target.port
                ),
            ));
        }
        let secret = cred.secret.expose_secret();
        replace_in_headers(headers, placeholder.as_bytes(), secret.as_bytes());
        *path_and_query = path_and_query.replace(placeholder.as_str(), secret);
        injected.push(&cred.grant);
    }
    let granted = run.credentials.iter().zip(&run.headers).zip(scopes);
    for ((cred, prepared), _) in granted.filter(|(_, scope)| **scope == Scope::Allowed) {
        match (&cred.inject, prepared) {
            (Injection::Query { param }, _) => {
                let secret = cred.secret.expose_secret();
                *path_and_query = set_query_param(path_and_query, param, secret);
            }
            (_, Some((name, value))) => {
                headers.insert(name.clone(), value.clone());
            }
            (_, None) => continue,
        }
        if !injected.contains(&cred.grant.as_str()) {
            injected.push(&cred.grant);
        }
    }
    Ok(injected)
}

/// Request bodies, for grants with `substitute_body`: swap the
/// placeholders of those that may go to this destination; refuse a
/// placeholder of any other (403); refuse a placeholder in a body too
/// large to buffer (413, when the upload reaches it). Bodiless requests
/// and runs without such grants pass through untouched.
async fn request_body<'r>(
    run: &'r RunContext,
    scopes: &[Scope],
    host: &str,
    max_substitution_body: usize,
    parts: &mut Parts,
    body: Incoming,
) -> Result<(ProxyBody, Vec<&'r str>), Refusal> {
    use hyper::body::Body as _;
    // The run token never leaves in a body: a streamed body is cut off
    // before it (run_token.rs), a buffered one is refused whole.
    let guard = |body: ProxyBody| match &run.token {
        Some(token) => TokenGuard::new(body, token.clone(), &run.run_id).boxed(),
        None => body,
    };
    // gRPC messages are never buffered nor swapped in: see grpc.rs.
    if body.is_end_stream() {
        return Ok((from_client(body), Vec::new()));
    }
    if crate::grpc::is_grpc(&parts.headers) {
        // Message by message, lengths kept: the token is masked in each
        // message (as secrets are in responses), which goes on as soon as
        // it is complete, so streaming calls stay streaming.
        let body = match &run.token {
            Some(token) => crate::grpc::GrpcScrubbed::new(
                from_client(body),
                &parts.headers,
                token.scrubber().clone(),
            )
            .boxed(),
            None => from_client(body),
        };
        return Ok((body, Vec::new()));
    }
    if run.body_placeholders.is_empty() {
        return Ok((guard(from_client(body)), Vec::new()));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut complete = false;
    while buf.len() <= max_substitution_body {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Refusal::new(
                    Rule::RequestBodyUnreadable,
                    format!("keyward could not read the request body: {e}\n"),
                ));
            }
            None => {
                complete = true;
                break;
            }
        }
    }
    if !complete {
        // Too large to buffer: stream it, but fail the upload if a
        // placeholder appears, before its last byte leaves.
        let prefix = buf.freeze();
        // The length is unchanged: nothing is substituted on this path.
        let guarded = Guarded::new(
            prefix,
            body,
            run.body_placeholders.clone(),
            max_substitution_body,
        );
        return Ok((guard(guarded.boxed()), Vec::new()));
    }
    if run.token.as_ref().is_some_and(|t| t.finds(&buf)) {
        return Err(RunToken::refusal("the request body"));
    }
    let mut bytes = buf.to_vec();
    let mut used = Vec::new();
    for (cred, scope) in run.credentials.iter().zip(scopes) {
        let Some(placeholder) = cred.placeholder.as_ref().filter(|_| cred.substitute_body) else {
            continue;
        };
        let found = bytes
            .windows(placeholder.len())
            .any(|w| w == placeholder.as_bytes());
        if !found {
            continue;
        }
        if *scope != Scope::Allowed {
            return Err(Refusal::new(
                Rule::PlaceholderWrongHost,
                format!(
                    "keyward refused this request: its body carries the placeholder of grant {}, whose secret may not go to {host}\n",
                    cred.grant
                ),
            ));
        }
        bytes = replace_bytes(
            &bytes,
            placeholder.as_bytes(),
            cred.secret.expose_secret().as_bytes(),
        );
        used.push(cred.grant.as_str());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    if let Ok(len) = HeaderValue::from_str(&bytes.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, len);
    }
    Ok((
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
        used,
    ))
}

/// The client's request body as it streams upstream, failing (when the
/// program breaks off) with the refusal that makes it the client's doing,
/// not the upstream's.
fn from_client(body: Incoming) -> ProxyBody {
    body.map_err(|e| Box::new(client_broke_off(e)) as BoxError)
        .boxed()
}

fn client_broke_off(e: hyper::Error) -> RefusedBody {
    RefusedBody::caused_by(
        Refusal::new(
            Rule::ClientBodyAborted,
            "keyward: the program's request body broke off before it was complete\n".to_owned(),
        ),
        e,
    )
}

fn large_body_message(max: usize) -> String {
    format!(
        "keyward refused this request: its body is over proxy.max_substitution_body ({max} bytes) and \
         carries a placeholder, which would have been sent unreplaced; send a smaller body or raise the limit\n"
    )
}

/// Streams a large request body, failing it if a placeholder appears; a
/// carry of one byte less than the longest placeholder is held back so a
/// whole placeholder never leaves.
struct Guarded {
    prefix: Option<Bytes>,
    inner: Incoming,
    needles: Arc<Vec<Vec<u8>>>,
    carry: Vec<u8>,
    keep: usize,
    /// `proxy.max_substitution_body`, which the refusal names.
    max: usize,
    done: bool,
}

impl Guarded {
    fn new(prefix: Bytes, inner: Incoming, needles: Arc<Vec<Vec<u8>>>, max: usize) -> Self {
        let keep = needles
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            prefix: Some(prefix),
            inner,
            needles,
            carry: Vec::new(),
            keep,
            max,
            done: false,
        }
    }

    fn check(&mut self, data: &[u8]) -> Result<Option<Bytes>, BoxError> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        if self
            .needles
            .iter()
            .any(|n| buf.windows(n.len()).any(|w| w == n.as_slice()))
        {
            return Err(Box::new(RefusedBody::new(Refusal::new(
                Rule::PlaceholderBody,
                large_body_message(self.max),
            ))));
        }
        let split = buf.len().saturating_sub(self.keep);
        self.carry = buf.split_off(split);
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use hyper::body::Frame;
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            match this.check(&prefix) {
                Ok(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        loop {
            if this.done {
                if this.carry.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = std::mem::take(&mut this.carry);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(Box::new(client_broke_off(e)))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match this.check(&data) {
                            Ok(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                            Ok(None) => {}
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    }
                }
            }
        }
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names: they concern this hop only, and HTTP/2
/// forbids them. `Proxy-Authorization` (the run token) never goes upstream.
/// `TE: trailers` is kept (gRPC needs it; the proxy relays trailers).
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Most messages carry none: one pass over the names instead of a
    // lookup per hop-by-hop name (this runs twice per request).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The headers [`strip_hop_by_hop`] removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_keeps_only_trailers() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("deflate, trailers"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers[header::TE], "trailers");
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get(header::TE).is_none());
    }
}
