//! The run token is a secret like any other: it is for keyward's proxy
//! (`Proxy-Authorization`, a base-URL path, a broker's attachment) and
//! never goes upstream. A request whose method, host, URL (path or query),
//! header names or values carry it is refused before anything is sent
//! (403, `run_token`); a request body that carries it is cut off before
//! the token's first byte leaves (see [`TokenGuard`]). It is looked for
//! raw and in the encodings the response [`Scrubber`] knows (base64 of the
//! bare token and of `run:<token>` at any alignment, hex), in any ASCII
//! case, and after percent-decoding. One matcher per run context, built
//! when the run authenticates, not per request.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use secrecy::SecretString;

use crate::body::BoxError;
use crate::record::Target;
use crate::refusal::{Refusal, RefusedBody, Rule};
use crate::scrub::Scrubber;

/// How many rounds of percent-decoding are looked through (`%2561` is
/// `%61` is `a`).
const DECODE_ROUNDS: usize = 3;

/// A run's token and the matcher that finds it.
pub struct RunToken {
    value: SecretString,
    scrubber: Arc<Scrubber>,
    /// Every byte any form of the token can be made of: a match cannot
    /// span another, so a streamed body holds back only a trailing run of
    /// these (most chunks end in none, and pass through whole).
    alphabet: [bool; 256],
    /// The longest form the matcher finds before decoding: a token fully
    /// percent-encoded (three bytes per byte) or its longest encoded needle.
    longest: usize,
}

impl std::fmt::Debug for RunToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunToken([REDACTED])")
    }
}

impl RunToken {
    /// The matcher for `token`; `None` for an empty one.
    pub(crate) fn new(token: &str) -> Option<Self> {
        let scrubber = Scrubber::any_case(&[(token.as_bytes(), b"[REDACTED]")])?;
        let longest = scrubber.longest().max(token.len() * 3);
        // Base64 (both alphabets), hex, percent-encoding, and the token's
        // own bytes in either case.
        let mut alphabet = [false; 256];
        for b in b"+/-_%".iter().chain(token.as_bytes()) {
            alphabet[usize::from(*b)] = true;
            alphabet[usize::from(b.to_ascii_lowercase())] = true;
            alphabet[usize::from(b.to_ascii_uppercase())] = true;
        }
        for b in (b'0'..=b'9').chain(b'a'..=b'z').chain(b'A'..=b'Z') {
            alphabet[usize::from(b)] = true;
        }
        Some(Self {
            value: SecretString::from(token.to_owned()),
            scrubber: Arc::new(scrubber),
            alphabet,
            longest,
        })
    }

    /// The matcher, for what is scrubbed rather than refused (WebSocket
    /// frames the child sends, see `tunnel.rs`).
    pub(crate) fn scrubber(&self) -> &Arc<Scrubber> {
        &self.scrubber
    }

    /// How many trailing bytes of `buf` could begin a form of the token
    /// that continues in the bytes to come.
    fn undecided(&self, buf: &[u8]) -> usize {
        let run = buf
            .iter()
            .rev()
            .take_while(|&&b| self.alphabet[usize::from(b)])
            .count();
        run.min(self.longest.saturating_sub(1))
    }

    /// The token itself (for the daemon's evidence redaction).
    pub(crate) fn value(&self) -> &SecretString {
        &self.value
    }

    /// Whether `hay` carries the token, raw, encoded, in any case, or
    /// percent-encoded on top of that.
    pub(crate) fn finds(&self, hay: &[u8]) -> bool {
        if self.scrubber.finds(hay) {
            return true;
        }
        let mut current = Cow::Borrowed(hay);
        for _ in 0..DECODE_ROUNDS {
            let Some(decoded) = percent_decoded(&current) else {
                return false;
            };
            if self.scrubber.finds(&decoded) {
                return true;
            }
            current = Cow::Owned(decoded);
        }
        false
    }

    /// `text` for the record: the token replaced by `[REDACTED]` (the
    /// whole text when only a decoded form holds it).
    pub(crate) fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.finds(text.as_bytes()) {
            return Cow::Borrowed(text);
        }
        match self.scrubber.replace(text.as_bytes()) {
            Some(out) if !self.finds(&out) => {
                Cow::Owned(String::from_utf8_lossy(&out).into_owned())
            }
            _ => Cow::Borrowed("[REDACTED]"),
        }
    }

    /// Where a request about to go upstream carries the token, if it does:
    /// its method, host, URI or a header (all but `Proxy-Authorization`,
    /// which is the proxy's own and never goes upstream).
    pub(crate) fn in_request(
        &self,
        method: &hyper::Method,
        target: &Target,
        uri: &hyper::Uri,
        headers: &HeaderMap,
    ) -> Option<Cow<'static, str>> {
        if self.finds(method.as_str().as_bytes()) {
            return Some("the method".into());
        }
        if self.finds(target.host.as_bytes())
            || uri
                .authority()
                .is_some_and(|a| self.finds(a.as_str().as_bytes()))
        {
            return Some("the host name".into());
        }
        if let Some(pq) = uri.path_and_query() {
            if self.finds(pq.path().as_bytes()) {
                return Some("the URL path".into());
            }
            if pq.query().is_some_and(|q| self.finds(q.as_bytes())) {
                return Some("the query string".into());
            }
        }
        self.in_headers(headers, true)
    }

    /// Which header of `headers` carries the token, if one does.
    pub(crate) fn in_headers(
        &self,
        headers: &HeaderMap,
        skip_proxy_authorization: bool,
    ) -> Option<Cow<'static, str>> {
        for (name, value) in headers {
            if skip_proxy_authorization && name == hyper::header::PROXY_AUTHORIZATION {
                continue;
            }
            if self.finds(name.as_str().as_bytes()) {
                return Some("a header name".into());
            }
            if self.finds(value.as_bytes()) {
                return Some(format!("the {name} header").into());
            }
        }
        None
    }

    /// The refusal of a request that carries the token in `place`.
    pub(crate) fn refusal(place: &str) -> Refusal {
        Refusal::new(
            Rule::RunToken,
            format!(
                "keyward refused this request: {place} carries this run's token (raw or encoded); \
                 the run token is for keyward's proxy only and never goes upstream. Nothing was sent\n"
            ),
        )
    }
}

/// `bytes` percent-decoded, or `None` when it holds no `%XX` escape.
fn percent_decoded(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let first = bytes.iter().position(|&b| b == b'%')?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    let mut changed = false;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some((hi, lo)) = bytes
                .get(i + 1)
                .and_then(|&h| hex(h))
                .zip(bytes.get(i + 2).and_then(|&l| hex(l)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            changed = true;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    changed.then_some(out)
}

/// A request body streamed upstream that fails (before the token's first
/// byte leaves) if it carries the run token: it holds back only a chunk's
/// trailing bytes that could begin a match (a run of the characters the
/// token's forms are made of, at most the longest form), in constant
/// memory, never the whole body; a chunk that ends otherwise (a newline,
/// a brace, a quote) goes out whole at once, so streamed uploads stay
/// streamed.
/// Trailers are checked too. The pipeline turns the failure into a 403.
pub(crate) struct TokenGuard<B> {
    inner: B,
    token: Arc<RunToken>,
    run_id: String,
    carry: BytesMut,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> TokenGuard<B> {
    pub(crate) fn new(inner: B, token: Arc<RunToken>, run_id: &str) -> Self {
        Self {
            inner,
            token,
            run_id: run_id.to_owned(),
            carry: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    fn tripped(&mut self) -> BoxError {
        self.done = true;
        self.carry.clear();
        self.trailers = None;
        tracing::warn!(
            run = self.run_id,
            "a request body carried the run token: its upload was cut off before the token"
        );
        Box::new(RefusedBody::new(RunToken::refusal("the request body")))
    }
}

impl<B> Body for TokenGuard<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if !this.carry.is_empty() {
                    let rest = this.carry.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.carry.extend_from_slice(&data);
                        if this.token.finds(&this.carry) {
                            return Poll::Ready(Some(Err(this.tripped())));
                        }
                        let keep = this.token.undecided(&this.carry);
                        let ready = this.carry.len() - keep;
                        if ready > 0 {
                            let out = this.carry.split_to(ready).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if this.token.in_headers(&trailers, false).is_some() {
                                return Poll::Ready(Some(Err(this.tripped())));
                            }
                            this.trailers = Some(trailers);
                        }
                        this.done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// A body yielding fixed chunks.
    struct Chunks(std::collections::VecDeque<String>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
        }
    }

    const TOKEN: &str = "3f9a0c1d2e4b5a6978877665544332211000ffeeddccbbaa9988776655443322";

    #[test]
    fn the_token_is_found_raw_encoded_in_any_case_and_percent_encoded() {
        let t = RunToken::new(TOKEN).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
        let percent: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
        let twice: String = TOKEN.bytes().map(|b| format!("%25{b:02x}")).collect();
        for carrier in [
            format!("https://x/r/{TOKEN}/g/page"),
            TOKEN.to_uppercase(),
            format!("Basic {}", b64(&format!("run:{TOKEN}"))),
            format!("x={}", b64(TOKEN)),
            hex.clone(),
            hex.to_uppercase(),
            format!("q={percent}&x=1"),
            format!("q={twice}"),
            format!("{{\"t\": \"{TOKEN}\"}}"),
        ] {
            assert!(t.finds(carrier.as_bytes()), "{carrier}");
            assert!(!t.redact(&carrier).contains(TOKEN), "{carrier}");
        }
        assert!(!t.finds(&TOKEN.as_bytes()[..60]));
        assert!(!t.finds(b"an ordinary request %41%42"));
        assert_eq!(t.redact("/v1/x"), "/v1/x");
        assert_eq!(
            t.redact(&format!("/a/{TOKEN}/b")),
            "/a/[REDACTED]/b".to_owned()
        );
        assert!(!format!("{t:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn a_body_carrying_the_token_fails_before_the_token_leaves() {
        use http_body_util::BodyExt;
        let t = Arc::new(RunToken::new(TOKEN).unwrap());
        let chunks = |parts: Vec<String>| Chunks(parts.into_iter().collect());
        // Split across chunks: nothing of the token is ever yielded.
        let (a, b) = TOKEN.split_at(30);
        let mut body = TokenGuard::new(
            chunks(vec![
                "x".repeat(1000),
                format!("{{\"k\": \"{a}"),
                format!("{b}\"}}"),
            ]),
            t.clone(),
            "run_x",
        );
        let mut sent = Vec::new();
        let failed = loop {
            match body.frame().await {
                Some(Ok(f)) => sent.extend_from_slice(&f.into_data().unwrap()),
                Some(Err(e)) => {
                    break RefusedBody::in_chain(&*e).is_some_and(|r| r.rule == Rule::RunToken);
                }
                None => break false,
            }
        };
        assert!(failed);
        assert!(!String::from_utf8_lossy(&sent).contains(a), "sent a prefix");
        // A chunk that cannot end in the start of a form goes out whole at
        // once; one ending in letters is held back only from those.
        let mut body = TokenGuard::new(
            chunks(vec!["{\"a\": 1}\n".into(), "abc def".into()]),
            t.clone(),
            "run_x",
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"{\"a\": 1}\n");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"abc ");
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&rest[..], b"def");
        // A body without it passes whole.
        let body = TokenGuard::new(
            chunks(vec!["hello ".into(), "world".repeat(100)]),
            t,
            "run_x",
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), 6 + 500);
    }
}
