//! Response scrubbing: every occurrence of a run's secrets, raw or in a
//! simple encoding, is replaced wherever a response can carry it (body,
//! header names and values, reason phrase, trailers, WebSocket frames).
//! One multi-pattern matcher per run context finds them all in one pass;
//! streamed bodies keep a carry of at most the longest needle minus one
//! byte, so matches split across chunks are caught in constant memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine;
use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue};

/// What an encoded form of a secret is replaced by.
const REDACTED: &[u8] = b"[REDACTED]";

/// Encoded forms shorter than this are left out: they would match
/// innocent text.
const MIN_ENCODED_NEEDLE: usize = 8;

/// The needles of a run: each secret, raw and encoded, and what replaces
/// each.
pub struct Scrubber {
    matcher: AhoCorasick,
    /// Header names arrive lower-cased: the same needles, any case.
    names: AhoCorasick,
    replacements: Vec<Vec<u8>>,
    longest: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("needles", &self.replacements.len())
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for `(secret, replacement)` pairs; `None` when there is
    /// no secret to look for.
    pub fn new(secrets: &[(&[u8], &[u8])]) -> Option<Self> {
        Self::build(secrets, false)
    }

    /// The same, finding every needle in any ASCII case (the run token:
    /// hex that a server would take upper-cased as well).
    pub fn any_case(secrets: &[(&[u8], &[u8])]) -> Option<Self> {
        Self::build(secrets, true)
    }

    fn build(secrets: &[(&[u8], &[u8])], any_case: bool) -> Option<Self> {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut replacements: Vec<Vec<u8>> = Vec::new();
        let mut add = |needle: Vec<u8>, replacement: &[u8]| {
            if !needle.is_empty() && !needles.contains(&needle) {
                needles.push(needle);
                replacements.push(replacement.to_vec());
            }
        };
        for (secret, replacement) in secrets {
            add(secret.to_vec(), replacement);
        }
        for (secret, _) in secrets {
            for form in encoded_forms(secret) {
                if form.len() >= MIN_ENCODED_NEEDLE {
                    add(form, REDACTED);
                }
            }
        }
        if needles.is_empty() {
            return None;
        }
        let build = |case_insensitive: bool| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(case_insensitive)
                .build(&needles)
                .expect("literal needles always build")
        };
        Some(Self {
            matcher: build(any_case),
            names: build(true),
            longest: needles.iter().map(Vec::len).max().unwrap_or(1),
            replacements,
        })
    }

    /// The longest needle, in bytes.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Whether `hay` holds a needle.
    pub fn finds(&self, hay: &[u8]) -> bool {
        self.matcher.is_match(hay)
    }

    /// `buf` with every needle replaced, or `None` if it holds none.
    pub fn replace(&self, buf: &[u8]) -> Option<Vec<u8>> {
        self.finds(buf)
            .then(|| self.replace_prefix(buf, buf.len(), true).0)
    }

    /// Scrubs what of `buf` can be decided now: a needle starting in the
    /// last `longest - 1` bytes could continue in the next chunk, so unless
    /// `last`, those bytes stay in `buf` for the next call. Returns what
    /// may be sent.
    pub fn replace_streaming(&self, buf: &mut Vec<u8>, last: bool) -> Vec<u8> {
        let (out, consumed) = self.replace_prefix(buf, self.decidable(buf.len(), last), last);
        buf.drain(..consumed);
        out
    }

    /// Overwrites every needle in `buf` with a mask of the same length
    /// (for streams whose framing declares lengths, as WebSocket does).
    /// Returns how many leading bytes are final; unless `last`, the rest
    /// could still be the start of a needle.
    pub fn mask_in_place(&self, buf: &mut [u8], last: bool) -> usize {
        let cut = self.decidable(buf.len(), last);
        let mut done = cut;
        let found: Vec<_> = self.matcher.find_iter(&*buf).collect();
        for m in found {
            if !last && m.start() >= cut {
                break;
            }
            buf[m.range()].copy_from_slice(&mask(m.len()));
            done = done.max(m.end());
        }
        done
    }

    /// Replaces needles in header values, and drops headers whose name
    /// holds one (a name cannot hold `[REDACTED]`).
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        let named: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.names.is_match(name.as_str()))
            .cloned()
            .collect();
        for name in named {
            tracing::debug!("dropped a response header whose name holds a secret");
            headers.remove(name);
        }
        for value in headers.values_mut() {
            if let Some(v) = self
                .replace(value.as_bytes())
                .and_then(|replaced| HeaderValue::from_bytes(&replaced).ok())
            {
                *value = v;
            } else if self.finds(value.as_bytes()) {
                *value = HeaderValue::from_static("[REDACTED]");
            }
        }
    }

    /// How much of a buffer of `len` bytes can be decided now.
    fn decidable(&self, len: usize, last: bool) -> usize {
        if last {
            len
        } else {
            len.saturating_sub(self.longest - 1)
        }
    }

    /// Replaces the needles that start before `cut` (any that does ends
    /// inside `buf`: `cut` is at least `longest - 1` bytes from the end,
    /// unless `last`). Returns the output and how many input bytes it
    /// covers.
    fn replace_prefix(&self, buf: &[u8], cut: usize, last: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(cut);
        let mut at = 0;
        for m in self.matcher.find_iter(buf) {
            if !last && m.start() >= cut {
                break;
            }
            out.extend_from_slice(&buf[at..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            at = m.end();
        }
        let end = cut.max(at);
        out.extend_from_slice(&buf[at..end]);
        (out, end)
    }
}

/// `[REDACTED]` cut or padded with `*` to `len` bytes.
pub(crate) fn mask(len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = if len < REDACTED.len() {
        Vec::new()
    } else {
        REDACTED.to_vec()
    };
    m.resize(len, b'*');
    m
}

/// The forms a secret takes when a server encodes it: base64 (standard
/// and URL-safe, at each of the three alignments it can start at inside a
/// longer encoded text, so only the characters that depend on the secret
/// alone), hex in both cases, and percent-encoding.
fn encoded_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for (offset, mixed) in [(0usize, 0usize), (1, 2), (2, 3)] {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted);
            let settled = shifted.len() * 8 / 6;
            if settled > mixed {
                forms.push(encoded.as_bytes()[mixed..settled].to_vec());
            }
        }
    }
    let hex_lower: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex_lower.to_ascii_uppercase().into_bytes());
    forms.push(hex_lower.into_bytes());
    // Percent-encoding: encoders differ on which punctuation they keep
    // (RFC 3986's unreserved `-._~`, or none), and on the case of the hex.
    for keep in [&b"-._~"[..], b""] {
        for upper in [true, false] {
            let encoded: String = secret
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphanumeric() || keep.contains(&b) {
                        (b as char).to_string()
                    } else if upper {
                        format!("%{b:02X}")
                    } else {
                        format!("%{b:02x}")
                    }
                })
                .collect();
            if encoded.as_bytes() != secret {
                forms.push(encoded.into_bytes());
            }
        }
    }
    forms
}

/// A body that scrubs `inner` as it streams, trailers included.
pub struct Scrubbed<B> {
    inner: B,
    scrubber: Arc<Scrubber>,
    carry: Vec<u8>,
    /// Trailers that arrived while bytes were still held back.
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl<B> Scrubbed<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, scrubber: Arc<Scrubber>) -> Self {
        Self {
            inner,
            scrubber,
            carry: Vec::new(),
            trailers: None,
            finished: false,
        }
    }
}

impl<B> Body for Scrubbed<B>
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
                if !this.carry.is_empty() {
                    let rest = this.scrubber.replace_streaming(&mut this.carry, true);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.finished = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.carry.extend_from_slice(&data);
                        let out = this.scrubber.replace_streaming(&mut this.carry, false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    // Trailers end the body; they go out scrubbed, after
                    // what is held back.
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
        self.finished && self.carry.is_empty() && self.trailers.is_none()
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

    /// A body yielding fixed chunks.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
            )
        }
    }

    fn scrubber(pairs: &[(&str, &str)]) -> Arc<Scrubber> {
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(s, r)| (s.as_bytes(), r.as_bytes()))
            .collect();
        Arc::new(Scrubber::new(&pairs).unwrap())
    }

    #[tokio::test]
    async fn secrets_split_across_chunks_are_replaced() {
        let chunks = [
            "hello s3c",
            "r3t-tok",
            "en and s3cr3t-token",
            "!",
            " s3cr3t-to",
        ];
        let body = Scrubbed::new(
            Chunks(chunks.into_iter().collect()),
            scrubber(&[("s3cr3t-token", "kw_ph_x")]),
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello kw_ph_x and kw_ph_x! s3cr3t-to");
    }

    #[test]
    fn several_needles_are_replaced_in_one_pass() {
        let s = scrubber(&[("aaaa", "X"), ("bbbb", "[REDACTED]")]);
        assert_eq!(
            s.replace(b"aaaabbbbaaaab").unwrap(),
            b"X[REDACTED]Xb".to_vec()
        );
        assert!(s.replace(b"nothing").is_none());
    }

    #[test]
    fn encoded_forms_of_a_secret_are_found_at_any_alignment() {
        let secret = b"kw-SECRET-value/+?=42";
        let s = scrubber(&[("kw-SECRET-value/+?=42", "kw_ph_1")]);
        let b64 = |e: base64::engine::GeneralPurpose, prefix: &[u8]| {
            let mut data = prefix.to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            e.encode(data)
        };
        for prefix in [&b""[..], b"x", b"xy", b"xyz"] {
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ] {
                let text = b64(engine, prefix);
                assert!(s.finds(text.as_bytes()), "{text}");
            }
        }
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(s.finds(hex.as_bytes()));
        assert!(s.finds(hex.to_uppercase().as_bytes()));
        assert!(s.finds(b"q=kw-SECRET-value%2F%2B%3F%3D42&x"));
        assert!(s.finds(b"q=kw-SECRET-value%2f%2b%3f%3d42&x"));
        assert!(!s.finds(b"kw-SECRET-value/+?=4"));
    }

    #[test]
    fn masks_keep_the_length_and_streaming_holds_back_only_a_possible_start() {
        let s = scrubber(&[("s3cr3t-token-value", "")]);
        let mut buf = b"xx s3cr3t-token-value yy ".to_vec();
        buf.extend_from_slice(&[b'z'; 64]);
        buf.extend_from_slice(b"s3cr3t");
        let done = s.mask_in_place(&mut buf, false);
        assert!(buf.starts_with(b"xx [REDACTED]******** yy z"));
        assert!(
            buf.ends_with(b"zs3cr3t"),
            "a possible start is left as it is"
        );
        assert_eq!(done, buf.len() - (s.longest() - 1));
        assert_eq!(mask(4), b"****");
        assert_eq!(mask(12), b"[REDACTED]**");
    }

    #[test]
    fn header_names_and_values_are_scrubbed() {
        let s = scrubber(&[("Tok-SECRET-99", "kw_ph_1")]);
        let mut headers = HeaderMap::new();
        headers.insert("x-tok-secret-99", HeaderValue::from_static("1"));
        headers.insert("x-echo", HeaderValue::from_static("Bearer Tok-SECRET-99"));
        s.scrub_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-echo"], "Bearer kw_ph_1");
    }
}
