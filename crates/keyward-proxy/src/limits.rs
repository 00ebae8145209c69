//! Bounds against slow or hostile clients that hyper does not set by
//! itself: a connection slot per client connection (held by every task
//! that serves it, tunnels included) and an idle timeout for HTTP/2
//! connections (HTTP/1.1 ones have hyper's header-read timeout, which
//! also bounds how long an idle keep-alive connection waits).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client connection's place under `proxy.max_connections`, released
/// when the last task serving that connection ends.
pub(crate) type Slot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// When a connection was last active, and how many of its requests are in
/// flight (a request waiting for its upstream moves no bytes, yet the
/// connection is not idle).
#[derive(Clone)]
pub(crate) struct Idle(Arc<IdleState>);

struct IdleState {
    timeout: Duration,
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Idle {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self(Arc::new(IdleState {
            timeout,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }))
    }

    fn touch(&self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.store(now, Ordering::Relaxed);
    }

    /// `io`, with each byte read or written counting as activity.
    pub(crate) fn watch<T>(&self, io: T) -> Watched<T> {
        Watched {
            io,
            idle: self.clone(),
        }
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Completes once nothing moved and no request was in flight for the
    /// timeout.
    pub(crate) async fn expired(&self) {
        loop {
            let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
            let quiet = self.0.start.elapsed().saturating_sub(last);
            if quiet >= self.0.timeout {
                if self.0.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                self.touch();
                continue;
            }
            tokio::time::sleep(self.0.timeout - quiet).await;
        }
    }
}

/// A request in flight.
pub(crate) struct InFlight(Idle);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is done.
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O object whose traffic keeps its connection from being idle.
pub(crate) struct Watched<T> {
    io: T,
    idle: Idle,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.idle.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.idle.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.idle.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why an upstream's body was cut off.
#[derive(Debug)]
pub(crate) struct UpstreamStalled(Duration);

impl std::fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream stalled: nothing of its body came for {}s (proxy.response_header_timeout)",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for UpstreamStalled {}

/// An upstream response body that fails once nothing of it arrives for
/// `timeout`: an upstream that stalls after its head would otherwise hold
/// the child, and its connection slot, for ever.
pub(crate) struct StallLimited<B> {
    inner: B,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> StallLimited<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> Body for StallLimited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(UpstreamStalled(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
