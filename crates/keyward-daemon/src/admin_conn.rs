//! Bounds on admin connections: a cap on how many are open at once, with a
//! separate, smaller share for processes inside runs (so a run that floods
//! the socket cannot lock its owner out), and an idle timeout that closes a
//! connection on which nothing was read or written for a while (a slow or
//! silent client holds no descriptor for long).

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
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
/// with `TimedOut` after [`ADMIN_IDLE_TIMEOUT`] without traffic. A
/// descriptor sent with the request bytes (`SCM_RIGHTS`: `keyward run`
/// handing over its fd broker) waits in its [`FdInbox`] for the handler.
pub(crate) struct AdminConn {
    inner: UnixStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    inbox: FdInbox,
}

/// Descriptors received on one admin connection: at most one is kept
/// (more are closed at once), and it is closed with the connection unless
/// a handler takes it.
#[derive(Clone, Default)]
pub(crate) struct FdInbox(Arc<std::sync::Mutex<Option<OwnedFd>>>);

impl std::fmt::Debug for FdInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FdInbox")
    }
}

impl FdInbox {
    /// The descriptor sent on this connection, if any (once).
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, fds: Vec<OwnedFd>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for fd in fds {
            if slot.is_none() {
                *slot = Some(fd);
            }
        }
    }
}

impl AdminConn {
    pub(crate) fn new(inner: UnixStream, slot: OwnedSemaphorePermit, inbox: FdInbox) -> Self {
        Self {
            inner,
            _slot: slot,
            idle: Box::pin(tokio::time::sleep(ADMIN_IDLE_TIMEOUT)),
            inbox,
        }
    }

    /// Reads like `read`, keeping a descriptor that comes with the bytes.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let inner = &self.inner;
            match inner.try_io(tokio::io::Interest::READABLE, || {
                keyward_sys::recv_with_fds(inner.as_fd(), unfilled, 1)
            }) {
                Ok(got) => {
                    self.inbox.put(got.fds);
                    buf.advance(got.len);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
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
        match self.poll_recv(cx, buf) {
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
