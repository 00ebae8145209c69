//! Bounds on admin connections: a cap on how many are open at once, with a
//! separate, smaller share for processes inside runs (so a run that floods
//! the socket cannot lock its owner out), and an idle timeout that closes a
//! connection on which nothing was read or written for a while (a slow or
//! silent client holds no descriptor for long).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How long an admin connection may stay without a byte either way.
pub(crate) const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection slots: one pool for callers outside any run, one for
/// processes inside runs (a quarter of the cap, at least one).
pub(crate) struct ConnectionBudget {
    outside: Arc<Semaphore>,
    confined: Arc<Semaphore>,
}

impl ConnectionBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            outside: Arc::new(Semaphore::new(max)),
            confined: Arc::new(Semaphore::new((max / 4).max(1))),
        }
    }

    /// A slot for a caller, or `None` when its pool is full.
    pub(crate) fn take(&self, confined: bool) -> Option<OwnedSemaphorePermit> {
        let pool = if confined {
            &self.confined
        } else {
            &self.outside
        };
        pool.clone().try_acquire_owned().ok()
    }
}

/// An admitted admin connection: it holds its slot until dropped and ends
/// with `TimedOut` after [`ADMIN_IDLE_TIMEOUT`] without traffic.
pub(crate) struct AdminConn {
    inner: UnixStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
}

impl AdminConn {
    pub(crate) fn new(inner: UnixStream, slot: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            _slot: slot,
            idle: Box::pin(tokio::time::sleep(ADMIN_IDLE_TIMEOUT)),
        }
    }

    fn active(&mut self) {
        self.idle
            .as_mut()
            .reset(Instant::now() + ADMIN_IDLE_TIMEOUT);
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "admin connection idle for too long",
    )
}

impl AsyncRead for AdminConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for AdminConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
