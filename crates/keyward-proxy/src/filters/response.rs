//! response_filter: every response of a run that holds secrets is
//! scrubbed of all of them (status line, headers, body, trailers),
//! whatever the request carried.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderName, HeaderValue};

use crate::body::{Frames, ProxyBody, frames_len};
use crate::decode::{Decoded, decoders_for};
use crate::refusal::{Refusal, Rule};
use crate::scrub::{Scrubbed, Scrubber};

/// Responses of a run that holds secrets, uncompressed, up to this size
/// and of known length, are scrubbed whole rather than streamed.
const SCRUB_IN_ONE_PIECE: u64 = 64 * 1024;

/// A response body scrubbed of the run's secrets. One that arrived
/// compressed is decoded first and goes on uncompressed; a small body
/// of known length is scrubbed whole and keeps an exact (new)
/// `Content-Length`: no chunked framing, one write toward the client.
pub(crate) async fn scrubbed_body(
    authority: &str,
    parts: &mut hyper::http::response::Parts,
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
pub(crate) fn scrub_reason_phrase(extensions: &mut hyper::http::Extensions, scrubber: &Scrubber) {
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
