//! Response scrubbing: every occurrence of an injected secret in a streamed
//! body is replaced, including matches split across chunks, in constant
//! memory (a carry of at most the longest secret minus one byte).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// (secret, replacement) pairs.
pub type Needles = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

/// Replaces every needle in `buf`.
pub fn replace_all(buf: &[u8], needles: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (needle, replacement) in needles {
        if needle.is_empty() {
            continue;
        }
        let src = out.as_deref().unwrap_or(buf);
        if !contains(src, needle) {
            continue;
        }
        let mut next = Vec::with_capacity(src.len());
        let mut i = 0;
        while i < src.len() {
            if src[i..].starts_with(needle) {
                next.extend_from_slice(replacement);
                i += needle.len();
            } else {
                next.push(src[i]);
                i += 1;
            }
        }
        out = Some(next);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A body that scrubs `inner` as it streams.
pub struct Scrubbed<B> {
    inner: B,
    needles: Needles,
    carry: Vec<u8>,
    keep: usize,
    finished: bool,
}

impl<B> Scrubbed<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, needles: Needles) -> Self {
        let keep = needles
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            inner,
            needles,
            carry: Vec::new(),
            keep,
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
                if this.carry.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = std::mem::take(&mut this.carry);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.finished = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let mut buf = std::mem::take(&mut this.carry);
                        buf.extend_from_slice(&data);
                        if let Some(replaced) = replace_all(&buf, &this.needles) {
                            buf = replaced;
                        }
                        let split = buf.len().saturating_sub(this.keep);
                        this.carry = buf.split_off(split);
                        if !buf.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
                        }
                    }
                    // Trailers end the body: flush what is held first.
                    Err(frame) => {
                        this.finished = true;
                        if this.carry.is_empty() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        let rest = std::mem::take(&mut this.carry);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.carry.is_empty()
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

    #[tokio::test]
    async fn secrets_split_across_chunks_are_replaced() {
        let needles: Needles = Arc::new(vec![(b"s3cr3t-token".to_vec(), b"kw_ph_x".to_vec())]);
        let chunks = [
            "hello s3c",
            "r3t-tok",
            "en and s3cr3t-token",
            "!",
            " s3cr3t-to",
        ];
        let body = Scrubbed::new(Chunks(chunks.into_iter().collect()), needles);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello kw_ph_x and kw_ph_x! s3cr3t-to");
    }

    #[test]
    fn replace_all_handles_several_needles() {
        let needles = vec![
            (b"aa".to_vec(), b"X".to_vec()),
            (b"bb".to_vec(), b"[REDACTED]".to_vec()),
        ];
        assert_eq!(
            replace_all(b"aabbaab", &needles).unwrap(),
            b"X[REDACTED]Xb".to_vec()
        );
        assert!(replace_all(b"nothing", &needles).is_none());
    }
}
