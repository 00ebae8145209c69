//! The per-core workers: one thread per core, each with a single-threaded
//! runtime of its own, all accepting on the proxy's listener. Which worker
//! a thread is decides which pooled upstream client it uses (`proxy.rs`).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// The most core workers [`Proxy::serve_per_core`] starts.
pub(crate) const MAX_WORKERS: usize = 64;

thread_local! {
    /// Which of the proxy's core workers this thread is, if it is one.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The core worker running on this thread, if any.
pub(crate) fn worker() -> Option<usize> {
    WORKER.get()
}

impl Proxy {
    /// [`serve`](Self::serve) on one thread per core, each with a
    /// single-threaded runtime of its own, all accepting on `listener`
    /// (like nginx's worker processes): a connection, its requests and its
    /// pooled upstream connections stay on one thread, where a work-stealing
    /// runtime would hand every request across threads several times
    /// (bench/proxy.sh: about 1.4x the requests/s at concurrency 64 on two
    /// cores). The workers start now (an error if they cannot); the future
    /// returned stops them when `shutdown` completes and ends when every
    /// worker has drained.
    pub fn serve_per_core(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<impl Future<Output = ()>> {
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(MAX_WORKERS);
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut done = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let listener = listener.try_clone()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (finished, finish) = tokio::sync::oneshot::channel::<()>();
            let proxy = self.clone();
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("keyward-proxy-{i}"))
                .spawn(move || {
                    WORKER.set(Some(i));
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let stop = async move {
                                    let _ = stopped.wait_for(|stop| *stop).await;
                                };
                                proxy.serve(listener, stop).await;
                            }
                            Err(e) => tracing::error!("proxy worker {i}: {e}"),
                        }
                    });
                    let _ = finished.send(());
                })?;
            done.push(finish);
        }
        drop(listener);
        let _ = self.workers.set(handles);
        Ok(async move {
            shutdown.await;
            let _ = stop.send(true);
            for finish in done {
                let _ = finish.await;
            }
        })
    }
}
