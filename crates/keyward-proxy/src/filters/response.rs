//! response_filter: every response of a run that holds secrets is
//! scrubbed of all of them (status line, headers, body, trailers),
//! whatever the request carried. Then logging: the request's record goes
//! out when the body is done (or when a joined connection ends).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::response::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};

use crate::body::{Frames, ProxyBody, empty, frames_len};
use crate::decode::{Decoded, decoders_for};
use crate::events::{EgressEvent, Metered};
use crate::filters::upstream::strip_hop_by_hop;
use crate::limits::StallLimited;
use crate::proxy::Proxy;
use crate::refusal::{Refusal, Rule};
use crate::request_ctx::{RequestCtx, is_websocket};
use crate::run_token::RunToken;
use crate::scrub::{Scrubbed, Scrubber};
use crate::tunnel::join_upgraded;

/// The upstream's response as the client gets it: scrubbed, hop-by-hop
/// headers out, cut off if the upstream stalls in its body; a switch of
/// protocols joins both sides.
pub(crate) async fn filter(
    proxy: &Proxy,
    ctx: &mut RequestCtx<'_>,
    resp: Response<Incoming>,
) -> Result<Response<ProxyBody>, Refusal> {
    let run = ctx.run;
    let (mut parts, body) = resp.into_parts();
    if let Some(scrubber) = &run.scrubber {
        scrub_reason_phrase(&mut parts.extensions, scrubber);
        scrubber.scrub_headers(&mut parts.headers);
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = ctx.upgrade.client.take()
    {
        return switched(proxy, ctx, parts, body, client);
    }
    ctx.event.status = parts.status.as_u16();
    strip_hop_by_hop(&mut parts.headers);
    let body = StallLimited::new(body, proxy.options.response_header_timeout).boxed();
    let body = match &run.scrubber {
        None => body,
        Some(scrubber) => scrubbed_body(&ctx.authority, &mut parts, body, scrubber).await?,
    };
    let body = Metered::new(body, ctx.event.take(), proxy.events.clone());
    Ok(Response::from_parts(parts, body.boxed()))
}

/// A 101: both sides are joined in the background, WebSocket frames
/// scrubbed. A switch to anything whose bytes cannot be scrubbed, when
/// there is something to scrub, is refused: nothing of it reaches the
/// child.
fn switched(
    proxy: &Proxy,
    ctx: &mut RequestCtx<'_>,
    parts: Parts,
    body: Incoming,
    client: OnUpgrade,
) -> Result<Response<ProxyBody>, Refusal> {
    let switched_to = parts.headers.get(header::UPGRADE);
    let joined_websocket = ctx.upgrade.websocket && switched_to.is_some_and(is_websocket);
    if !joined_websocket && (!ctx.injected.is_empty() || ctx.upgrade.scrub_frames) {
        return Err(Refusal::new(
            Rule::UpstreamSwitchRefused,
            format!(
                "keyward refused {}'s switch to {:?}: only WebSocket is joined when frames must be scrubbed\n",
                ctx.authority,
                switched_to
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            ),
        ));
    }
    let scrubber = ctx.run.scrubber.clone().filter(|_| joined_websocket);
    let token = ctx.run.token.clone().filter(|_| joined_websocket);
    let mut resp = Response::from_parts(parts, body);
    let upstream = hyper::upgrade::on(&mut resp);
    join_after_switch(proxy, ctx.event.take(), client, upstream, scrubber, token);
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, empty()))
}

/// After a 101, joins both sides in the background; the event is
/// recorded when the joined connection ends, with the bytes relayed.
fn join_after_switch(
    proxy: &Proxy,
    mut event: EgressEvent,
    client: OnUpgrade,
    upstream: OnUpgrade,
    scrubber: Option<Arc<Scrubber>>,
    token: Option<Arc<RunToken>>,
) {
    event.status = 101;
    let sink = proxy.events.clone();
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                event.bytes = join_upgraded(client, upstream, scrubber, token).await;
            }
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
        sink.record(event);
    });
}

/// Responses of a run that holds secrets, uncompressed, up to this size
/// and of known length, are scrubbed whole rather than streamed.
const SCRUB_IN_ONE_PIECE: u64 = 64 * 1024;

/// A response body scrubbed of the run's secrets. One that arrived
/// compressed is decoded first and goes on uncompressed; a small body
/// of known length is scrubbed whole and keeps an exact (new)
/// `Content-Length`: no chunked framing, one write toward the client.
async fn scrubbed_body(
    authority: &str,
    parts: &mut Parts,
    body: ProxyBody,
    scrubber: &Arc<Scrubber>,
) -> Result<ProxyBody, Refusal> {
    use hyper::body::Body as _;
    let encoding = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    let decoders = if body.is_end_stream() {
        None
    } else {
        decoders_for(&encoding).map_err(|coding| unknown_encoding(authority, &coding))?
    };
    if let Some(decoders) = decoders {
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        let decoded = Decoded::new(body, decoders);
        return Ok(Scrubbed::new(decoded, scrubber.clone()).boxed());
    }
    if crate::grpc::is_grpc(&parts.headers) {
        // Lengths must not change: masked in place, message by message
        // (a gRPC body that came with a Content-Encoding was decoded and
        // scrubbed above, as any body: safe, if no longer gRPC).
        return Ok(crate::grpc::GrpcScrubbed::new(body, &parts.headers, scrubber.clone()).boxed());
    }
    // The declared length must be the body's: not so for HEAD or 304.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n <= SCRUB_IN_ONE_PIECE) && declared == body.size_hint().exact() {
        let collected = body.collect().await.map_err(|e| {
            let lost = format!("keyward lost the response of {authority}: {e}");
            Refusal::new(Rule::UpstreamLost, format!("{lost}\n"))
                .with_cause(format!("the response body broke off: {}", lost.trim_end()))
        })?;
        let trailers = collected.trailers().cloned();
        let whole = collected.to_bytes();
        let whole = scrubber.replace(&whole).map_or(whole, Bytes::from);
        let mut frames = vec![Frame::data(whole)];
        match trailers {
            None => {
                parts.headers.insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from(frames_len(&frames)),
                );
            }
            Some(mut trailers) => {
                // Chunked, declaring the trailers: an HTTP/1.1 client
                // gets only declared ones (HTTP/2 upstreams, gRPC
                // among them, do not declare them).
                scrubber.scrub_headers(&mut trailers);
                parts.headers.remove(header::CONTENT_LENGTH);
                let names: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
                if let Ok(declared) = HeaderValue::from_str(&names.join(", ")) {
                    parts.headers.insert(header::TRAILER, declared);
                }
                frames.push(Frame::trailers(trailers));
            }
        }
        return Ok(Frames(frames.into()).boxed());
    }
    // Lengths change when a secret is replaced.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Scrubbed::new(body, scrubber.clone()).boxed())
}

/// A response in a `Content-Encoding` the proxy cannot decode: refused
/// rather than sent unscrubbed.
fn unknown_encoding(authority: &str, coding: &str) -> Refusal {
    Refusal::new(
        Rule::UnknownEncoding,
        format!(
            "keyward refused {authority}'s response: it is encoded with {coding:?}, which keyward cannot decode to scrub \
             (it decodes gzip, deflate, br and zstd, and asks a grant's hosts for identity)\n"
        ),
    )
}

/// A reason phrase that holds a secret is scrubbed (or dropped, when the
/// scrubbed text is not a valid reason phrase).
fn scrub_reason_phrase(extensions: &mut hyper::http::Extensions, scrubber: &Scrubber) {
    let Some(reason) = extensions.get::<hyper::ext::ReasonPhrase>() else {
        return;
    };
    if let Some(replaced) = scrubber.replace(reason.as_bytes()) {
        match hyper::ext::ReasonPhrase::try_from(replaced) {
            Ok(scrubbed) => {
                extensions.insert(scrubbed);
            }
            Err(_) => {
                extensions.remove::<hyper::ext::ReasonPhrase>();
            }
        }
    }
}
