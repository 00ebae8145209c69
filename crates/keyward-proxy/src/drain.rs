//! Graceful stop of the proxy's connections.

/// Graceful stop: HTTP connections are told to finish their request in
/// flight and close; `serve` returns once none is left (or the drain
/// timeout passes). Raw tunnels and upgraded (WebSocket) streams are not
/// waited for: they have no request boundary to stop at.
pub(crate) struct Drain {
    closing: tokio::sync::watch::Sender<bool>,
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

pub(crate) struct DrainGuard<'a>(&'a Drain);

/// Serves a hyper connection until it ends; when the proxy starts closing,
/// asks it to finish the request in flight and stop. (A macro, not a
/// generic function: rustc cannot prove a generic wrapper around hyper's
/// connection futures `Send` for `tokio::spawn`.)
macro_rules! drained {
    ($drain:expr, $conn:expr) => {
        drained!($drain, $conn, std::future::pending::<()>())
    };
    // `$idle` completes when the connection has been idle too long: it is
    // closed like a stopping proxy closes it.
    ($drain:expr, $conn:expr, $idle:expr) => {{
        let drain = &$drain;
        let _active = drain.enter();
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            out = &mut conn => out,
            () = drain.closing() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = $idle => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if self
            .0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self {
            closing: tokio::sync::watch::channel(false).0,
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Counts a connection as active until the guard drops.
    pub(crate) fn enter(&self) -> DrainGuard<'_> {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        DrainGuard(self)
    }

    /// Completes when the proxy starts closing.
    pub(crate) async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Tells every connection to close and waits until they have, at most
    /// `limit`.
    pub(crate) async fn close(&self, limit: std::time::Duration) {
        let _ = self.closing.send(true);
        let idle = async {
            loop {
                let notified = self.idle.notified();
                if self.active.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, idle).await.is_err() {
            tracing::warn!(
                "proxy: {} connection(s) still busy after {}s; closing them",
                self.active.load(std::sync::atomic::Ordering::Acquire),
                limit.as_secs()
            );
        }
    }
}
