//! gRPC bodies. A gRPC body is a stream of length-prefixed messages (one
//! flag byte, whose low bit says "compressed", and a 4-byte big-endian
//! length), and inside a message protobuf prefixes fields with their
//! lengths too. So nothing in a gRPC body may change length: a secret in
//! a response message is overwritten by a mask of the same length, and
//! placeholders are not swapped in request messages (the grant's header,
//! i.e. gRPC metadata, carries the credential). Every message is relayed
//! as soon as it is complete, so streaming calls stay streaming; only the
//! tail of an unfinished message that could start a secret waits for the
//! next bytes. A compressed message (a server that compresses although
//! keyward asked for `grpc-accept-encoding: identity`) is decoded (gzip,
//! deflate), scrubbed and sent on uncompressed; any other encoding ends
//! the call with `INTERNAL`, as does a compressed message over
//! [`MAX_COMPRESSED`].

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response};
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

use crate::scrub::Scrubber;

/// A compressed message is held whole to decode it, up to this size
/// compressed and [`MAX_DECOMPRESSED`] decoded (gRPC's default receive
/// limit is 4 MiB).
const MAX_COMPRESSED: usize = 4 << 20;
const MAX_DECOMPRESSED: u64 = 16 << 20;

/// The message prefix: a flag byte and a 4-byte length.
const PREFIX: usize = 5;

/// Whether `headers` describe a gRPC body: `application/grpc`,
/// `application/grpc+proto` and the like, and gRPC-Web's binary form
/// (`application/grpc-web`, `application/grpc-web+proto`), whose trailers
/// travel as a last message with flag 0x80. Not gRPC-Web's text form,
/// which is base64.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = content_type.split(';').next().unwrap_or("").trim();
    let media = media.to_ascii_lowercase();
    ["application/grpc", "application/grpc-web"]
        .iter()
        .any(|base| {
            media
                .strip_prefix(base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
        })
}

/// What the proxy asks a gRPC server for in a run that holds secrets:
/// uncompressed messages, which can be scrubbed as they stream.
pub(crate) fn ask_uncompressed(headers: &mut HeaderMap) {
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
}

/// Marks a response keyward made itself (a refusal, a 407 for a run that
/// is gone), not the upstream's, with the status a gRPC client gets
/// instead.
#[derive(Clone, Copy)]
pub(crate) struct OwnAnswer(pub(crate) GrpcStatus);

/// The gRPC status codes keyward answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcStatus {
    Unknown,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl GrpcStatus {
    /// The code in `grpc-status`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GrpcStatus::Unknown => "2",
            GrpcStatus::PermissionDenied => "7",
            GrpcStatus::ResourceExhausted => "8",
            GrpcStatus::Unimplemented => "12",
            GrpcStatus::Internal => "13",
            GrpcStatus::Unavailable => "14",
            GrpcStatus::Unauthenticated => "16",
        }
    }
}

/// For a gRPC request, keyward's own answer as a gRPC status: a gRPC
/// client shows `grpc-message`, not an HTTP body, so the reason (what was
/// refused and what to do) would otherwise be lost. A trailers-only
/// response: HTTP 200, `grpc-status` the answer's own code (see
/// `Rule::grpc_status`), the text in `grpc-message`, `x-keyward-blocked`
/// kept.
pub(crate) async fn own_answer_as_status<B>(resp: Response<B>) -> Response<B>
where
    B: Body<Data = Bytes> + Default,
{
    use http_body_util::BodyExt;
    let Some(&OwnAnswer(code)) = resp.extensions().get::<OwnAnswer>() else {
        return resp;
    };
    let (mut parts, body) = resp.into_parts();
    let text = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    parts.status = hyper::StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from_static(code.as_str()));
    if let Ok(message) =
        HeaderValue::from_str(&percent_encode(text.trim_ascii(), GRPC_MESSAGE).to_string())
    {
        parts.headers.insert("grpc-message", message);
    }
    Response::from_parts(parts, B::default())
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`,
/// percent-encoded.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// The message being read.
enum Message {
    /// Its prefix, not yet whole.
    Prefix(Vec<u8>),
    /// An uncompressed message: `held` is read but not yet sent (it could
    /// start a secret), `remaining` is still to come.
    Plain { held: Vec<u8>, remaining: usize },
    /// A compressed message, held whole until it is decoded.
    Compressed { data: Vec<u8>, remaining: usize },
}

/// A gRPC response body scrubbed message by message; trailers scrubbed
/// like headers.
pub(crate) struct GrpcScrubbed<B> {
    inner: B,
    scrubber: Arc<Scrubber>,
    /// The response's `grpc-encoding`, for compressed messages.
    encoding: String,
    message: Message,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl<B> GrpcScrubbed<B> {
    /// Wraps the body of a response with `headers`.
    pub(crate) fn new(inner: B, headers: &HeaderMap, scrubber: Arc<Scrubber>) -> Self {
        let encoding = headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .trim()
            .to_ascii_lowercase();
        Self {
            inner,
            scrubber,
            encoding,
            message: Message::Prefix(Vec::with_capacity(PREFIX)),
            trailers: None,
            finished: false,
        }
    }

    /// Takes `data` in; returns what may be sent now, or the status that
    /// ends the call when a message cannot be scrubbed.
    fn take(&mut self, mut data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(data.len());
        while !data.is_empty() {
            match &mut self.message {
                Message::Prefix(prefix) => {
                    let n = (PREFIX - prefix.len()).min(data.len());
                    prefix.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if prefix.len() < PREFIX {
                        break;
                    }
                    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
                    let len = len as usize;
                    if prefix[0] & 1 == 0 {
                        // Masks keep lengths: the prefix goes as it came.
                        out.extend_from_slice(prefix);
                        self.message = if len == 0 {
                            Message::Prefix(Vec::with_capacity(PREFIX))
                        } else {
                            Message::Plain {
                                held: Vec::new(),
                                remaining: len,
                            }
                        };
                    } else if len > MAX_COMPRESSED {
                        return Err(format!(
                            "keyward cannot scrub a compressed message of {len} bytes (over {MAX_COMPRESSED})"
                        ));
                    } else {
                        self.message = Message::Compressed {
                            data: Vec::with_capacity(len),
                            remaining: len,
                        };
                    }
                }
                Message::Plain { held, remaining } => {
                    let n = (*remaining).min(data.len());
                    held.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    *remaining -= n;
                    let end = *remaining == 0;
                    let ready = self.scrubber.mask_in_place(held, end);
                    out.extend(held.drain(..ready));
                    if end {
                        self.message = Message::Prefix(Vec::with_capacity(PREFIX));
                    }
                }
                Message::Compressed {
                    data: held,
                    remaining,
                } => {
                    let n = (*remaining).min(data.len());
                    held.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    *remaining -= n;
                    if *remaining == 0 {
                        let mut plain = decompress(&self.encoding, held)?;
                        self.scrubber.mask_in_place(&mut plain, true);
                        let len = u32::try_from(plain.len())
                            .map_err(|_| "a decompressed message over 4 GiB".to_owned())?;
                        // Sent uncompressed: flag 0 is valid whatever
                        // `grpc-encoding` the response names.
                        out.push(0);
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(&plain);
                        self.message = Message::Prefix(Vec::with_capacity(PREFIX));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whatever is held when the body ends (a message the server broke
    /// off), scrubbed.
    fn rest(&mut self) -> Vec<u8> {
        match std::mem::replace(&mut self.message, Message::Prefix(Vec::new())) {
            Message::Prefix(prefix) => prefix,
            Message::Plain { mut held, .. } => {
                self.scrubber.mask_in_place(&mut held, true);
                held
            }
            // Cannot be decoded: dropped (the client sees a short body).
            Message::Compressed { .. } => Vec::new(),
        }
    }
}

/// A compressed message's bytes, decoded.
fn decompress(encoding: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut plain = Vec::new();
    let read = match encoding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut plain),
        "deflate" => flate2::read::ZlibDecoder::new(data)
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut plain),
        other => {
            return Err(format!(
                "keyward cannot scrub a message compressed with grpc-encoding {other:?} (it decodes gzip and deflate)"
            ));
        }
    };
    match read {
        Ok(n) if n as u64 > MAX_DECOMPRESSED => Err(format!(
            "keyward cannot scrub a message that decompresses to over {MAX_DECOMPRESSED} bytes"
        )),
        Ok(_) => Ok(plain),
        Err(e) => Err(format!(
            "keyward could not decode a {encoding} message to scrub it: {e}"
        )),
    }
}

/// Trailers that end a call keyward could not scrub: `INTERNAL` with why.
fn refusal(message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        HeaderValue::from_static(GrpcStatus::Internal.as_str()),
    );
    // grpc-message is percent-encoded; this text is ASCII without '%'.
    if let Ok(v) = HeaderValue::from_str(message) {
        trailers.insert("grpc-message", v);
    }
    trailers
}

impl<B> Body for GrpcScrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                let rest = this.rest();
                if !rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.finished = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match this.take(&data) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(why) => {
                            tracing::info!("gRPC response refused: {why}");
                            this.finished = true;
                            this.message = Message::Prefix(Vec::new());
                            this.trailers = Some(refusal(&why));
                        }
                    },
                    Err(frame) => {
                        this.finished = true;
                        if let Ok(mut trailers) = frame.into_trailers() {
                            this.scrubber.scrub_headers(&mut trailers);
                            this.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A trailers-only response (an error status in the head) must
        // reach the client as one: HEADERS with END_STREAM.
        let held = match &self.message {
            Message::Prefix(p) => !p.is_empty(),
            _ => true,
        };
        (self.finished || self.inner.is_end_stream()) && !held && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body of fixed frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    const SECRET: &[u8] = b"grpc-SECRET-value-42";

    fn scrubber() -> Arc<Scrubber> {
        Arc::new(Scrubber::new(&[(SECRET, b"kw_ph_1")]).unwrap())
    }

    fn message(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![flag];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn grpc_headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-encoding", HeaderValue::from_str(encoding).unwrap());
        h
    }

    #[test]
    fn grpc_content_types_are_told_apart() {
        let mut h = HeaderMap::new();
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=x", true),
            ("application/grpc-web", true),
            ("application/grpc-web+proto", true),
            ("application/grpc-web-text", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[tokio::test]
    async fn secrets_are_masked_in_place_and_each_message_goes_out_whole() {
        let mut first = b"token: ".to_vec();
        first.extend_from_slice(SECRET);
        let mut stream = message(0, &first);
        stream.extend(message(0, b"second"));
        // Split inside the secret and inside the second prefix.
        let (a, b) = stream.split_at(15);
        let (b, c) = b.split_at(first.len() + 5 - 15 + 2);
        let mut body = GrpcScrubbed::new(
            Frames(
                [a, b, c]
                    .into_iter()
                    .map(|s| Frame::data(Bytes::copy_from_slice(s)))
                    .collect(),
            ),
            &grpc_headers("identity"),
            scrubber(),
        );
        let mut sent = Vec::new();
        while let Some(frame) = body.frame().await {
            sent.push(frame.unwrap().into_data().unwrap());
        }
        let mut masked = b"token: ".to_vec();
        masked.extend_from_slice(&crate::scrub::mask(SECRET.len()));
        let mut expected = message(0, &masked);
        // The first message is complete in the second frame: all of it
        // has gone out by then, not with the third.
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[..2].concat(), expected);
        expected.extend(message(0, b"second"));
        assert_eq!(sent.concat(), expected);
    }

    #[tokio::test]
    async fn compressed_messages_are_decoded_scrubbed_and_sent_plain() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(SECRET).unwrap();
        let compressed = e.finish().unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-echo", HeaderValue::from_bytes(SECRET).unwrap());
        let frames = [
            Frame::data(Bytes::from(message(1, &compressed))),
            Frame::trailers(trailers),
        ];
        let body = GrpcScrubbed::new(
            Frames(frames.into_iter().collect()),
            &grpc_headers("gzip"),
            scrubber(),
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["x-echo"], "kw_ph_1");
        assert_eq!(
            collected.to_bytes().as_ref(),
            message(0, &crate::scrub::mask(SECRET.len()))
        );
    }

    #[tokio::test]
    async fn an_encoding_that_cannot_be_decoded_ends_the_call_with_internal() {
        let frames = [Frame::data(Bytes::from(message(1, b"snappy bytes")))];
        let body = GrpcScrubbed::new(
            Frames(frames.into_iter().collect()),
            &grpc_headers("snappy"),
            scrubber(),
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "13");
        assert!(
            trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("\"snappy\"")
        );
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn keywards_own_answers_become_a_grpc_status_with_the_reason() {
        use http_body_util::Full;
        let mut refusal = Response::new(Full::new(Bytes::from_static(
            b"keyward refused this: 100% \xc3\xa9\n",
        )));
        *refusal.status_mut() = hyper::StatusCode::FORBIDDEN;
        refusal
            .extensions_mut()
            .insert(OwnAnswer(GrpcStatus::PermissionDenied));
        refusal
            .headers_mut()
            .insert("x-keyward-blocked", HeaderValue::from_static("rule"));
        let status = own_answer_as_status(refusal).await;
        assert_eq!(status.status(), 200);
        assert!(status.body().is_end_stream());
        let h = status.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "7");
        assert_eq!(h["grpc-message"], "keyward refused this: 100%25 %C3%A9");
        assert_eq!(h["x-keyward-blocked"], "rule");
        // The upstream's answers are left as they are.
        let mut upstream = Response::new(Full::new(Bytes::from_static(b"x")));
        *upstream.status_mut() = hyper::StatusCode::FORBIDDEN;
        assert_eq!(own_answer_as_status(upstream).await.status(), 403);
    }

    #[test]
    fn grpc_messages_are_encoded_as_before_for_every_byte() {
        // The encoder grpc.rs had before it used `percent-encoding`.
        let hand_written = |text: &[u8]| -> String {
            text.iter()
                .map(|&b| match b {
                    b' '..=b'~' if b != b'%' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let every_byte: Vec<u8> = (0..=u8::MAX).collect();
        for text in [&every_byte[..], b"refused: 100% \xc3\xa9\n"] {
            assert_eq!(
                percent_encode(text, GRPC_MESSAGE).to_string(),
                hand_written(text)
            );
        }
    }

    #[test]
    fn a_trailers_only_response_is_at_its_end_at_once() {
        struct Ended;
        impl Body for Ended {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Poll::Ready(None)
            }
            fn is_end_stream(&self) -> bool {
                true
            }
        }
        let body = GrpcScrubbed::new(Ended, &grpc_headers("identity"), scrubber());
        assert!(body.is_end_stream());
    }
}
