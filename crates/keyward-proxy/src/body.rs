//! The bodies the proxy answers with: its own short texts and bodies of
//! frames known in advance.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The body type of everything the proxy answers.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text response of the proxy's own.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A body of frames known in advance (a scrubbed body and its trailers).
pub(crate) struct Frames(pub(crate) std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // With trailers the length is left open: HTTP/1.1 sends trailers
        // only in chunked framing.
        if self.0.iter().any(Frame::is_trailers) {
            return hyper::body::SizeHint::default();
        }
        hyper::body::SizeHint::with_exact(frames_len(&self.0) as u64)
    }
}

/// The data bytes of `frames`.
pub(crate) fn frames_len<'a>(frames: impl IntoIterator<Item = &'a Frame<Bytes>>) -> usize {
    frames
        .into_iter()
        .filter_map(Frame::data_ref)
        .map(Bytes::len)
        .sum()
}
