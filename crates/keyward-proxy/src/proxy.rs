//! The proxy: its settings, collaborators and upstream client. Requests
//! come in through `accept` (the forward proxy and CONNECT), `broker` (a
//! run's fd broker) and `base_url` (a grant's plain-HTTP endpoint), and all
//! go through the one pipeline in `pipeline`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ca::CertificateAuthority;
use crate::context::RunAuthority;
use crate::drain::Drain;
use crate::events::{EgressSink, LogSink};
use crate::resolve::{UpstreamClient, build_client};

/// The proxy.
pub struct Proxy {
    pub(crate) options: ProxyOptions,
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) authority: Arc<dyn RunAuthority>,
    /// The upstream clients and the roots they trust; replaced whole when
    /// `proxy.upstream_ca` is reloaded (requests in flight finish on the
    /// clients they started with).
    trust: std::sync::RwLock<Arc<UpstreamTrust>>,
    /// The core workers' runtimes, once they run: broker streams are
    /// handed to them in turn.
    pub(crate) workers: std::sync::OnceLock<Vec<tokio::runtime::Handle>>,
    pub(crate) next_worker: std::sync::atomic::AtomicUsize,
    /// For cleartext HTTP/2 clients (h2c, see h2c.rs): HTTP/2 with prior
    /// knowledge, over `http://` only.
    h2c_client: std::sync::OnceLock<UpstreamClient>,
    pub(crate) events: Arc<dyn EgressSink>,
    pub(crate) drain: Arc<Drain>,
    /// Client connections and broker streams open at once
    /// (`proxy.max_connections`): one budget for every way in.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
}

/// Which CONNECT tunnels are intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intercept {
    /// Every tunnel: policy sees every request.
    #[default]
    All,
    /// Only tunnels to hosts a grant of the run names; others are relayed
    /// byte for byte after the network check.
    Granted,
}

/// Proxy settings beyond its collaborators.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// Request bodies up to this size are buffered so placeholders in them
    /// can be swapped; a larger body that carries one is refused (413).
    pub max_substitution_body: usize,
    /// Which tunnels are intercepted.
    pub intercept: Intercept,
    /// How long a stopping proxy lets requests in flight finish.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request head (HTTP/1.1; also
    /// how long an idle keep-alive connection waits for its next request)
    /// or to finish the TLS handshake of an intercepted tunnel.
    pub header_read_timeout: Duration,
    /// How long an HTTP/2 connection with no request in flight and no
    /// traffic stays open.
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long connecting to an upstream may take.
    pub connect_timeout: Duration,
    /// How long an upstream may take to answer with its response head, and
    /// each further part of its body.
    pub response_header_timeout: Duration,
    /// How long a pooled upstream connection may stay idle.
    pub upstream_idle_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            max_substitution_body: 1 << 20,
            intercept: Intercept::All,
            drain_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            connect_timeout: Duration::from_secs(30),
            response_header_timeout: Duration::from_secs(300),
            upstream_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// What upstream servers are trusted with: the system roots plus
/// `proxy.upstream_ca`, and the pooled clients built on them.
struct UpstreamTrust {
    /// `proxy.upstream_ca`, read and checked.
    extra_roots: Vec<CertificateDer<'static>>,
    /// Built on first use: loading the system roots is slow, and start-up
    /// should not wait for it.
    client: std::sync::OnceLock<UpstreamClient>,
    /// One pooled client per core worker ([`Proxy::serve_per_core`]): a
    /// pooled connection's task then runs on the thread its requests come
    /// from, with no wake-up across threads per request.
    worker_clients: Box<[std::sync::OnceLock<UpstreamClient>]>,
}

impl UpstreamTrust {
    fn new(extra_roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            extra_roots,
            client: std::sync::OnceLock::new(),
            worker_clients: (0..crate::workers::MAX_WORKERS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }
}

/// The certificates of `proxy.upstream_ca`, each file read and each
/// certificate checked.
fn read_upstream_ca(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let mut roots = Vec::new();
    for path in paths {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                ProxyError(format!(
                    "cannot read proxy.upstream_ca {}: {e}",
                    path.display()
                ))
            })?;
        for cert in certs {
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| ProxyError(format!("bad certificate in {}: {e}", path.display())))?;
            roots.push(cert);
        }
    }
    Ok(roots)
}

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyError(String);

impl Proxy {
    /// A proxy signing with `ca`, asking `authority` about tokens, and
    /// trusting the system roots plus `upstream_ca` upstream.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authority: Arc<dyn RunAuthority>,
        upstream_ca: &[PathBuf],
    ) -> Result<Self, ProxyError> {
        Self::with_options(ca, authority, upstream_ca, ProxyOptions::default())
    }

    /// Like [`Proxy::new`], with explicit [`ProxyOptions`].
    pub fn with_options(
        ca: Arc<CertificateAuthority>,
        authority: Arc<dyn RunAuthority>,
        upstream_ca: &[PathBuf],
        options: ProxyOptions,
    ) -> Result<Self, ProxyError> {
        let extra_roots = read_upstream_ca(upstream_ca)?;
        // Warm the system roots now, on their own thread.
        std::thread::spawn(|| {
            crate::ca::system_roots();
        });
        Ok(Self {
            options,
            ca,
            authority,
            trust: std::sync::RwLock::new(Arc::new(UpstreamTrust::new(extra_roots))),
            workers: std::sync::OnceLock::new(),
            next_worker: std::sync::atomic::AtomicUsize::new(0),
            h2c_client: std::sync::OnceLock::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(options.max_connections)),
            events: Arc::new(LogSink),
            drain: Arc::new(Drain::new()),
        })
    }

    /// The pooled upstream client (system roots plus `proxy.upstream_ca`;
    /// TLS 1.2 or newer, verification always on).
    pub(crate) fn client(&self) -> UpstreamClient {
        let trust = self.trust.read().unwrap_or_else(|p| p.into_inner()).clone();
        let slot = crate::workers::worker()
            .and_then(|i| trust.worker_clients.get(i))
            .unwrap_or(&trust.client);
        slot.get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(crate::ca::system_roots().iter().cloned());
            roots.add_parsable_certificates(trust.extra_roots.iter().cloned());
            build_client(roots, &self.options, false)
        })
        .clone()
    }

    /// Trusts `upstream_ca` (with the system roots) from the next request
    /// on (`proxy.upstream_ca` reloaded); on error nothing changes.
    pub fn set_upstream_ca(&self, upstream_ca: &[PathBuf]) -> Result<(), ProxyError> {
        let roots = read_upstream_ca(upstream_ca)?;
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(UpstreamTrust::new(roots));
        Ok(())
    }

    /// The client for requests that came as h2c: no roots, as it never
    /// speaks TLS.
    pub(crate) fn h2c_client(&self) -> &UpstreamClient {
        self.h2c_client.get_or_init(|| {
            let roots = rustls::RootCertStore::empty();
            build_client(roots, &self.options, true)
        })
    }
}

impl Proxy {
    /// Sends each request's event to `sink` instead of the log.
    pub fn with_sink(mut self, sink: Arc<dyn EgressSink>) -> Self {
        self.events = sink;
        self
    }

    /// An HTTP/1.1 server connection with the proxy's header-read timeout.
    pub(crate) fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout);
        builder
    }
}
