//! The forward proxy. Phases, after pingora: `request_filter` (run token,
//! network rules), `upstream_request_filter` (placeholders, injection),
//! `response_filter` (scrubbing), `logging` (one event per request).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyward_api::{Decision, EvaluateRequest, Network};
use keyward_policy::Policy;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpStream};

use crate::ca::CertificateAuthority;
use crate::decode::{Decoded, decoders_for};
use crate::events::{EgressEvent, EgressSink, LogSink, Metered, PolicyDecision};
use crate::limits::{Idle, Slot, StallLimited, Tracked};
use crate::rules::{AllowRule, GrantHost, Injection, is_denied_address, is_metadata};
use crate::scrub::{Scrubbed, Scrubber};
use crate::websocket;

/// The body type of everything the proxy answers.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One credential of a run, resolved.
pub struct Credential {
    /// The grant it comes from.
    pub grant: String,
    /// Where it may go.
    pub hosts: Vec<GrantHost>,
    /// How.
    pub inject: Injection,
    /// The value.
    pub secret: SecretString,
    /// The placeholder the child holds instead, if any.
    pub placeholder: Option<String>,
    /// May go over plain HTTP (the grant says `plaintext = true`).
    pub plaintext: bool,
    /// Its placeholder is swapped in request bodies too (the grant says
    /// `substitute_body = true`).
    pub substitute_body: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("grant", &self.grant)
            .field("secret", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Whether a credential may go to a request's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Not one of its hosts and ports.
    Outside,
    /// Its host and port, over TLS or to a `plaintext` grant.
    Allowed,
    /// Its host and port, but in clear, which the grant does not allow.
    Cleartext,
}

impl Credential {
    fn scope(&self, host: &str, port: u16, tls: bool) -> Scope {
        if !self.hosts.iter().any(|h| h.matches(host, port, tls)) {
            Scope::Outside
        } else if tls || self.plaintext {
            Scope::Allowed
        } else {
            Scope::Cleartext
        }
    }

    /// Whether `host:port` is one of its destinations, by either scheme.
    fn names(&self, host: &str, port: u16) -> bool {
        self.hosts
            .iter()
            .any(|h| h.matches(host, port, true) || h.matches(host, port, false))
    }
}

/// What the proxy knows of a run, with what the per-request path needs
/// prepared once.
#[derive(Debug)]
pub struct RunContext {
    /// `run_…`.
    pub run_id: String,
    /// Network mode.
    pub network: Network,
    /// Extra allowed hosts (strict mode).
    pub allow: Vec<AllowRule>,
    /// Resolved credentials.
    pub credentials: Vec<Credential>,
    /// Finds every secret of the run (raw and encoded) in responses;
    /// `None` when the run holds no secret.
    scrubber: Option<Arc<Scrubber>>,
    /// Placeholders of credentials that swap them in request bodies: what
    /// a request body is checked for.
    body_placeholders: Arc<Vec<Vec<u8>>>,
    /// Per credential (same order), the header it injects, made once here
    /// rather than per request; `None` for query injection or a header
    /// that cannot be sent (warned about when the context is made).
    headers: Vec<Option<(HeaderName, HeaderValue)>>,
    /// The policy every request is evaluated against (`http_request`).
    pub policy: Option<Arc<Policy>>,
    /// Grants of the run whose secret is unavailable right now (the vault
    /// is sealed, the secret was removed): requests toward their hosts are
    /// refused rather than sent without the credential.
    pub withheld: Vec<Withheld>,
}

/// A grant whose secret cannot be had right now.
#[derive(Debug, Clone)]
pub struct Withheld {
    /// The grant.
    pub grant: String,
    /// Its hosts.
    pub hosts: Vec<GrantHost>,
    /// Whether the cause is a sealed vault (423) rather than a secret that
    /// does not resolve (503). The detail stays in the daemon's log: a
    /// backend's error text is not the child's to read.
    pub sealed: bool,
}

impl RunContext {
    /// A run's context; the scrubber and placeholder needles are built
    /// here, not per request.
    pub fn new(
        run_id: String,
        network: Network,
        allow: Vec<AllowRule>,
        credentials: Vec<Credential>,
    ) -> Self {
        let pairs: Vec<(&[u8], &[u8])> = credentials
            .iter()
            .map(|c| {
                let replacement = c.placeholder.as_deref().unwrap_or("[REDACTED]");
                (c.secret.expose_secret().as_bytes(), replacement.as_bytes())
            })
            .collect();
        let scrubber = Scrubber::new(&pairs).map(Arc::new);
        let body_placeholders = credentials
            .iter()
            .filter(|c| c.substitute_body)
            .filter_map(|c| c.placeholder.as_ref().map(|p| p.as_bytes().to_vec()))
            .collect();
        let headers = credentials.iter().map(injected_header).collect();
        Self {
            run_id,
            network,
            allow,
            credentials,
            scrubber,
            body_placeholders: Arc::new(body_placeholders),
            headers,
            policy: None,
            withheld: Vec::new(),
        }
    }

    /// Evaluates every request of the run against `policy`.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The grants whose secret is unavailable now.
    pub fn with_withheld(mut self, withheld: Vec<Withheld>) -> Self {
        self.withheld = withheld;
        self
    }

    /// Whether the run names `host:port` itself: an `--allow` pattern or a
    /// grant's host.
    fn names_host(&self, host: &str, port: u16) -> bool {
        self.allow.iter().any(|a| a.matches(host, port))
            || self.credentials.iter().any(|c| c.names(host, port))
    }
}

/// Where the proxy learns which run a token belongs to. Called for each
/// request, so a removed run loses access at once.
pub trait RunAuthority: Send + Sync + 'static {
    /// The run holding `token`, if any.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Arc<RunContext>>>;

    /// An upstream answered 401 to a request that carried `grants`' secrets
    /// for `run_id`: a cached value may be stale, so the next request
    /// should resolve it again.
    fn credential_rejected(&self, run_id: &str, grants: &[String]) {
        let _ = (run_id, grants);
    }
}

/// The proxy.
pub struct Proxy {
    options: ProxyOptions,
    ca: Arc<CertificateAuthority>,
    authority: Arc<dyn RunAuthority>,
    /// Built on first use: loading the system roots is slow, and start-up
    /// should not wait for it.
    client: std::sync::OnceLock<UpstreamClient>,
    /// `proxy.upstream_ca`, read (and checked) at construction.
    extra_roots: Vec<CertificateDer<'static>>,
    events: Arc<dyn EgressSink>,
    drain: Arc<Drain>,
}

/// Graceful stop: HTTP connections are told to finish their request in
/// flight and close; `serve` returns once none is left (or the drain
/// timeout passes). Raw tunnels and upgraded (WebSocket) streams are not
/// waited for: they have no request boundary to stop at.
struct Drain {
    closing: tokio::sync::watch::Sender<bool>,
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

struct DrainGuard<'a>(&'a Drain);

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
    fn new() -> Self {
        Self {
            closing: tokio::sync::watch::channel(false).0,
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Counts a connection as active until the guard drops.
    fn enter(&self) -> DrainGuard<'_> {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        DrainGuard(self)
    }

    /// Completes when the proxy starts closing.
    async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Tells every connection to close and waits until they have, at most
    /// `limit`.
    async fn close(&self, limit: std::time::Duration) {
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
        }
    }
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
        let mut extra_roots = Vec::new();
        for path in upstream_ca {
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
                    .map_err(|e| {
                        ProxyError(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                extra_roots.push(cert);
            }
        }
        // Warm the system roots now, on their own thread.
        std::thread::spawn(|| {
            crate::ca::system_roots();
        });
        Ok(Self {
            options,
            ca,
            authority,
            client: std::sync::OnceLock::new(),
            extra_roots,
            events: Arc::new(LogSink),
            drain: Arc::new(Drain::new()),
        })
    }

    /// The pooled upstream client (system roots plus `proxy.upstream_ca`;
    /// TLS 1.2 or newer, verification always on).
    fn client(&self) -> &UpstreamClient {
        self.client.get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(crate::ca::system_roots().iter().cloned());
            roots.add_parsable_certificates(self.extra_roots.iter().cloned());
            build_client(roots, self.options.connect_timeout)
        })
    }
}

/// Responses of a run that holds secrets, uncompressed, up to this size
/// and of known length, are scrubbed whole rather than streamed.
const SCRUB_IN_ONE_PIECE: u64 = 64 * 1024;

/// How long a pooled upstream connection may stay idle.
const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(90);

type UpstreamClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, ProxyBody>;

fn build_client(roots: rustls::RootCertStore, connect_timeout: Duration) -> UpstreamClient {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(CheckedResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    // Without a timer the pool never closes an idle connection: up to 256
    // per upstream host would stay open for the daemon's lifetime.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_POOL_IDLE)
        .build(connector)
}

impl Proxy {
    /// Sends each request's event to `sink` instead of the log.
    pub fn with_sink(mut self, sink: Arc<dyn EgressSink>) -> Self {
        self.events = sink;
        self
    }

    /// The event of a request, before its outcome is known.
    fn event(
        &self,
        run: &RunContext,
        method: &str,
        host: &str,
        port: u16,
        path: &str,
    ) -> EgressEvent {
        EgressEvent {
            run_id: run.run_id.clone(),
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            status: 0,
            bytes: 0,
            injected: Vec::new(),
            blocked: None,
            decision: None,
            error: None,
        }
    }

    /// Records a request that ends here, with `status`.
    fn finish(&self, mut event: EgressEvent, status: u16, blocked: Option<&str>) {
        event.status = status;
        event.blocked = blocked.map(str::to_owned);
        self.events.record(event);
    }

    /// While events cannot be recorded (the evidence log's disk is full),
    /// a 503 instead of an unrecorded request. The refusal is itself an
    /// event, recorded if the log can take it by then; the log looks for
    /// room by itself, so refusals end soon after space comes back.
    fn refuse_unrecorded(&self, event: &EgressEvent) -> Option<Response<ProxyBody>> {
        let why = self.events.unwritable()?;
        tracing::error!(
            host = event.host,
            "proxy request refused: cannot record it: {why}"
        );
        self.finish(event.clone(), 503, Some(EVIDENCE_UNAVAILABLE));
        Some(blocked_response(
            StatusCode::SERVICE_UNAVAILABLE,
            EVIDENCE_UNAVAILABLE,
            "keyward refused this request: the evidence log cannot record it (the daemon log says why)\n",
        ))
    }

    /// Accepts connections until `shutdown` completes, then lets requests
    /// in flight finish (up to `ProxyOptions::drain_timeout`) and returns.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.options.max_connections));
        let mut refusing = false;
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    drop(listener);
                    return self.drain.close(self.options.drain_timeout).await;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            refusing = false;
                            let proxy = self.clone();
                            tokio::spawn(async move {
                                proxy.connection(stream, peer, Arc::new(slot)).await
                            });
                        }
                        Err(_) => {
                            // Closed at once: a flood of clients cannot
                            // take the daemon's file descriptors.
                            if !refusing {
                                tracing::warn!(
                                    "proxy: {} connections open (proxy.max_connections); refusing new ones until some close",
                                    self.options.max_connections
                                );
                                refusing = true;
                            }
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        tracing::error!("proxy accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// An HTTP/1.1 server connection with the proxy's header-read timeout.
    fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout);
        builder
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        let _ = stream.set_nodelay(true);
        let proxy = self.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(proxy.outer(req, slot).await) }
        });
        let conn = self
            .http1()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        if let Err(e) = drained!(self.drain, conn) {
            tracing::debug!(%peer, "proxy connection ended: {e}");
        }
    }

    /// A request on the plain proxy connection: CONNECT or absolute-form.
    async fn outer(self: Arc<Self>, req: Request<Incoming>, slot: Slot) -> Response<ProxyBody> {
        let Some(token) = proxy_token(&req) else {
            return proxy_auth_required();
        };
        let Some(run) = self.authority.authenticate(&token).await else {
            return proxy_auth_required();
        };
        if req.method() == Method::CONNECT {
            let Some(authority) = req.uri().authority().cloned() else {
                return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n");
            };
            let host = authority.host().to_owned();
            let port = authority.port_u16().unwrap_or(443);
            let mut event = self.event(&run, "CONNECT", &host, port, "");
            if let Err(blocked) = network_check(&run, &host, port) {
                self.finish(event, 403, Some(&blocked.rule));
                return blocked.response();
            }
            if self.options.intercept == Intercept::Granted
                && run
                    .credentials
                    .iter()
                    .all(|c| c.scope(&host, port, true) == Scope::Outside)
            {
                // Not intercepted: the policy sees the host, not the paths.
                let (decision, verdict) = policy_check(&run, "CONNECT", &host, port, "/");
                event.decision = decision;
                if let Err(blocked) = verdict {
                    self.finish(event, 403, Some(&blocked.rule));
                    return blocked.response();
                }
                if let Some(refused) = self.refuse_unrecorded(&event) {
                    return refused;
                }
                return self.tunnel(req, host, port, event, slot).await;
            }
            let server_config = match self.ca.server_config(&host) {
                Ok(cfg) => cfg,
                Err(e) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("cannot mint a certificate for {host}: {e}\n"),
                    );
                }
            };
            let proxy = self.clone();
            let drain_for_inner = self.drain.clone();
            let http1 = self.http1();
            let idle_timeout = self.options.idle_timeout;
            tokio::spawn(async move {
                // The tunnel holds the connection's slot until it ends.
                let _slot = slot;
                let upgraded = match hyper::upgrade::on(req).await {
                    Ok(u) => u,
                    Err(e) => return tracing::debug!("CONNECT upgrade failed: {e}"),
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                let handshake = acceptor.accept(TokioIo::new(upgraded));
                let tls = match tokio::time::timeout(proxy.options.header_read_timeout, handshake)
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return tracing::info!(
                            host,
                            "client TLS handshake failed (does it trust the keyward CA?): {e}"
                        );
                    }
                    Err(_) => {
                        return tracing::info!(
                            host,
                            "client did not finish its TLS handshake within proxy.header_read_timeout"
                        );
                    }
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let idle = Idle::new(idle_timeout);
                let in_flight = idle.clone();
                let svc = service_fn(move |inner: Request<Incoming>| {
                    let proxy = proxy.clone();
                    let token = token.clone();
                    let host = host.clone();
                    let in_flight = in_flight.begin();
                    async move {
                        // Re-check per request: a removed run loses access at once.
                        let Some(run) = proxy.authority.authenticate(&token).await else {
                            return Ok::<_, Infallible>(proxy_auth_required());
                        };
                        let resp = proxy.forward(&run, "https", &host, port, inner).await;
                        Ok(resp.map(|body| Tracked::new(body, in_flight).boxed()))
                    }
                });
                let drain = drain_for_inner.clone();
                let served = if h2 {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(idle.watch(tls)), svc);
                    drained!(drain, conn, idle.expired())
                } else {
                    let conn = http1
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    drained!(drain, conn)
                };
                if let Err(e) = served {
                    tracing::debug!("intercepted connection ended: {e}");
                }
            });
            return Response::new(empty());
        }
        let uri = req.uri().clone();
        match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => {
                let host = host.to_owned();
                let port = uri.port_u16().unwrap_or(80);
                self.forward(&run, "http", &host, port, req).await
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                "this is keyward's proxy: send absolute-form http:// requests or CONNECT\n",
            ),
        }
    }

    /// Forwards one request upstream with the run's credentials.
    async fn forward(
        &self,
        run: &RunContext,
        scheme: &str,
        host: &str,
        port: u16,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let tls = scheme == "https";
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // An HTTP/1.1 upgrade (WebSocket): the handshake goes through the
        // same pipeline (injection included); after a 101 both sides are
        // joined, WebSocket frames scrubbed (see websocket.rs).
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .filter(|_| req.version() == hyper::Version::HTTP_11);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let mut event = self.event(run, method.as_str(), host, port, &path);
        if let Err(blocked) = network_check(run, host, port) {
            self.finish(event, 403, Some(&blocked.rule));
            return blocked.response();
        }
        let (decision, verdict) = policy_check(run, method.as_str(), host, port, &path);
        event.decision = decision;
        if let Err(blocked) = verdict {
            self.finish(event, 403, Some(&blocked.rule));
            return blocked.response();
        }
        if let Some(refused) = self.refuse_unrecorded(&event) {
            return refused;
        }
        let (mut parts, body) = req.into_parts();

        // upstream_request_filter: where the run's credentials may go,
        // then placeholders, then injection.
        let scopes: Vec<Scope> = run
            .credentials
            .iter()
            .map(|c| c.scope(host, port, tls))
            .collect();
        if let Some(cred) = run
            .credentials
            .iter()
            .zip(&scopes)
            .find_map(|(c, s)| (*s == Scope::Cleartext).then_some(c))
        {
            let blocked = plaintext_refused(cred, host, port);
            self.finish(event, 403, Some(&blocked.rule));
            return blocked.response();
        }
        if let Some(w) = run
            .withheld
            .iter()
            .find(|w| w.hosts.iter().any(|h| h.matches(host, port, tls)))
        {
            let (status, rule) = if w.sealed {
                (StatusCode::LOCKED, "vault_sealed")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "secret_unavailable")
            };
            self.finish(event, status.as_u16(), Some(rule));
            return blocked_response(
                status,
                rule,
                &format!(
                    "keyward did not send this request: the secret of grant {} is unavailable ({}); \
                     nothing was sent to {host}:{port}\n",
                    w.grant,
                    if w.sealed {
                        "the vault is sealed: `keyward vault unseal`"
                    } else {
                        "see the daemon log"
                    }
                ),
            );
        }
        if scopes.contains(&Scope::Allowed)
            && let Err(blocked) = authority_check(&parts, host, port, tls)
        {
            self.finish(event, 403, Some(&blocked.rule));
            return blocked.response();
        }
        let mut injected: Vec<&str> = Vec::new();
        let mut path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        for (cred, scope) in run.credentials.iter().zip(&scopes) {
            let Some(placeholder) = &cred.placeholder else {
                continue;
            };
            let in_headers = parts.headers.values().any(|v| {
                v.as_bytes()
                    .windows(placeholder.len())
                    .any(|w| w == placeholder.as_bytes())
            });
            let in_uri = path_and_query.contains(placeholder.as_str());
            if !(in_headers || in_uri) {
                continue;
            }
            if *scope != Scope::Allowed {
                self.finish(event, 403, Some("placeholder_wrong_host"));
                return blocked_response(
                    StatusCode::FORBIDDEN,
                    "placeholder_wrong_host",
                    &format!(
                        "keyward refused this request: it carries the placeholder of grant {}, whose secret may not go to {host}:{port}\n",
                        cred.grant
                    ),
                );
            }
            let secret = cred.secret.expose_secret();
            replace_in_headers(
                &mut parts.headers,
                placeholder.as_bytes(),
                secret.as_bytes(),
            );
            path_and_query = path_and_query.replace(placeholder.as_str(), secret);
            injected.push(&cred.grant);
        }
        let granted = run.credentials.iter().zip(&run.headers).zip(&scopes);
        for ((cred, prepared), _) in granted.filter(|(_, scope)| **scope == Scope::Allowed) {
            match (&cred.inject, prepared) {
                (Injection::Query { param }, _) => {
                    let secret = cred.secret.expose_secret();
                    path_and_query = set_query_param(&path_and_query, param, secret);
                }
                (_, Some((name, value))) => {
                    parts.headers.insert(name.clone(), value.clone());
                }
                (_, None) => continue,
            }
            if !injected.contains(&cred.grant.as_str()) {
                injected.push(&cred.grant);
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        // Toward a grant's host, ask for an uncompressed response: it is
        // scrubbed as it streams, without decoding.
        if run.credentials.iter().any(|c| c.names(host, port)) {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let websocket = upgrade.as_ref().is_some_and(is_websocket);
        if let Some(protocol) = &upgrade {
            if !injected.is_empty() && !websocket {
                self.finish(event, 403, Some(UPGRADE_REFUSED));
                return closing(blocked_response(
                    StatusCode::FORBIDDEN,
                    UPGRADE_REFUSED,
                    &format!(
                        "keyward refused this upgrade to {:?}: a handshake that carries a secret may only upgrade to WebSocket, whose frames keyward scrubs\n",
                        String::from_utf8_lossy(protocol.as_bytes())
                    ),
                ));
            }
            parts.headers.insert(header::UPGRADE, protocol.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let scrub_frames = websocket && run.scrubber.is_some();
        if scrub_frames {
            // Compressed frames could not be scrubbed.
            parts.headers.remove("sec-websocket-extensions");
        }
        // The upstream connection negotiates its own version (ALPN); the
        // client's (h2 or HTTP/1.1 with the proxy) does not carry over.
        parts.version = hyper::Version::HTTP_11;
        let authority = if (tls && port == 443) || (!tls && port == 80) {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        parts.uri = match Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot build the upstream URL: {e}\n"),
                );
            }
        };
        let body = match self
            .request_body(run, &scopes, host, &mut parts, body)
            .await
        {
            Ok((body, body_injected)) => {
                for grant in body_injected {
                    if !injected.contains(&grant) {
                        injected.push(grant);
                    }
                }
                body
            }
            Err(refusal) => {
                self.finish(event, refusal.status().as_u16(), Some("placeholder_body"));
                return refusal;
            }
        };
        let upstream_req = Request::from_parts(parts, body);
        event.injected = injected.iter().map(|g| (*g).to_owned()).collect();

        let sent = tokio::time::timeout(
            self.options.response_header_timeout,
            self.client().request(upstream_req),
        );
        let resp = match sent.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) if is_large_body_refusal(&e) => {
                event.injected.clear();
                self.finish(event, 413, Some("placeholder_body"));
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &large_body_message(self.options.max_substitution_body),
                );
            }
            Ok(Err(e)) => {
                let why = keyward_api::error_chain(&e);
                event.error = Some(format!("no response: {why}"));
                self.finish(event, 502, None);
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("keyward could not reach {authority}: {why}\n"),
                );
            }
            Err(_) => {
                self.finish(event, 504, None);
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "keyward gave up on {authority}: no response head within proxy.response_header_timeout ({}s)\n",
                        self.options.response_header_timeout.as_secs()
                    ),
                );
            }
        };

        if resp.status() == StatusCode::UNAUTHORIZED && !event.injected.is_empty() {
            self.authority
                .credential_rejected(&run.run_id, &event.injected);
        }
        // response_filter: every response of a run that holds secrets is
        // scrubbed of all of them, whatever the request carried.
        let (mut parts, body) = resp.into_parts();
        if let Some(scrubber) = &run.scrubber {
            scrub_reason_phrase(&mut parts.extensions, scrubber);
            scrubber.scrub_headers(&mut parts.headers);
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let joined_websocket =
                websocket && parts.headers.get(header::UPGRADE).is_some_and(is_websocket);
            if !joined_websocket && (!injected.is_empty() || scrub_frames) {
                // The server switched to something whose bytes cannot be
                // scrubbed: nothing of it reaches the child.
                self.finish(event, 502, Some(UPGRADE_REFUSED));
                return closing(blocked_response(
                    StatusCode::BAD_GATEWAY,
                    UPGRADE_REFUSED,
                    &format!(
                        "keyward refused {authority}'s switch to {:?}: only WebSocket is joined when frames must be scrubbed\n",
                        parts
                            .headers
                            .get(header::UPGRADE)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .unwrap_or_default()
                    ),
                ));
            }
            event.status = 101;
            let sink = self.events.clone();
            let scrubber = run.scrubber.clone().filter(|_| joined_websocket);
            let resp = Response::from_parts(parts, body);
            let mut resp = resp;
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        event.bytes = join_upgraded(client, upstream, scrubber).await;
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
                sink.record(event);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        event.status = parts.status.as_u16();
        strip_hop_by_hop(&mut parts.headers);
        let body = StallLimited::new(body, self.options.response_header_timeout).boxed();
        let body = match &run.scrubber {
            None => body,
            Some(scrubber) => match self.scrubbed_body(&mut parts, body, scrubber).await {
                Ok(body) => body,
                Err(why) => {
                    if let Unscrubbable::Lost(e) = &why {
                        event.error = Some(format!("the response body broke off: {e}"));
                    }
                    self.finish(event, 502, Some(why.rule()));
                    return why.response(&authority);
                }
            },
        };
        // logging: the event goes out when the body is done, with its size.
        let body = Metered::new(body, event, self.events.clone());
        Response::from_parts(parts, body.boxed())
    }

    /// A response body scrubbed of the run's secrets. One that arrived
    /// compressed is decoded first and goes on uncompressed; a small body
    /// of known length is scrubbed whole and keeps an exact (new)
    /// `Content-Length`: no chunked framing, one write toward the client.
    async fn scrubbed_body(
        &self,
        parts: &mut hyper::http::response::Parts,
        body: ProxyBody,
        scrubber: &Arc<Scrubber>,
    ) -> Result<ProxyBody, Unscrubbable> {
        use hyper::body::Body as _;
        let encoding = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let decoders = if body.is_end_stream() {
            None
        } else {
            decoders_for(&encoding).map_err(Unscrubbable::Encoding)?
        };
        if let Some(decoders) = decoders {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            let decoded = Decoded::new(body, decoders);
            return Ok(Scrubbed::new(decoded, scrubber.clone()).boxed());
        }
        // The declared length must be the body's: not so for HEAD or 304.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n <= SCRUB_IN_ONE_PIECE) && declared == body.size_hint().exact()
        {
            let collected = body
                .collect()
                .await
                .map_err(|e| Unscrubbable::Lost(e.to_string()))?;
            let trailers = collected.trailers().cloned();
            let whole = collected.to_bytes();
            let whole = scrubber.replace(&whole).map_or(whole, Bytes::from);
            let mut frames = vec![Frame::data(whole)];
            match trailers {
                None => {
                    parts.headers.insert(
                        header::CONTENT_LENGTH,
                        HeaderValue::from(frames_len(&frames)),
                    );
                }
                Some(mut trailers) => {
                    // Chunked, declaring the trailers: an HTTP/1.1 client
                    // gets only declared ones (HTTP/2 upstreams, gRPC
                    // among them, do not declare them).
                    scrubber.scrub_headers(&mut trailers);
                    parts.headers.remove(header::CONTENT_LENGTH);
                    let names: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
                    if let Ok(declared) = HeaderValue::from_str(&names.join(", ")) {
                        parts.headers.insert(header::TRAILER, declared);
                    }
                    frames.push(Frame::trailers(trailers));
                }
            }
            return Ok(Frames(frames.into()).boxed());
        }
        // Lengths change when a secret is replaced.
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Scrubbed::new(body, scrubber.clone()).boxed())
    }
}

/// Why a response could not be scrubbed: it is refused rather than sent.
enum Unscrubbable {
    /// A `Content-Encoding` the proxy cannot decode.
    Encoding(String),
    /// The upstream broke off while the body was read whole.
    Lost(String),
}

impl Unscrubbable {
    fn rule(&self) -> &'static str {
        match self {
            Unscrubbable::Encoding(_) => "unknown_encoding",
            Unscrubbable::Lost(_) => "upstream_lost",
        }
    }

    fn response(&self, authority: &str) -> Response<ProxyBody> {
        match self {
            Unscrubbable::Encoding(coding) => blocked_response(
                StatusCode::BAD_GATEWAY,
                self.rule(),
                &format!(
                    "keyward refused {authority}'s response: it is encoded with {coding:?}, which keyward cannot decode to scrub \
                     (it decodes gzip, deflate, br and zstd, and asks a grant's hosts for identity)\n"
                ),
            ),
            Unscrubbable::Lost(e) => text(
                StatusCode::BAD_GATEWAY,
                &format!("keyward lost the response of {authority}: {e}\n"),
            ),
        }
    }
}

/// A body of frames known in advance (a scrubbed body and its trailers).
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

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
fn frames_len<'a>(frames: impl IntoIterator<Item = &'a Frame<Bytes>>) -> usize {
    frames
        .into_iter()
        .filter_map(Frame::data_ref)
        .map(Bytes::len)
        .sum()
}

/// `resp` with the connection closed after it: a client that asked to
/// switch protocols is not left waiting on a connection that will not.
fn closing(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The block rule of a refused upgrade.
const UPGRADE_REFUSED: &str = "upgrade_refused";

/// Whether an `Upgrade` value is exactly one protocol, WebSocket (a list
/// such as `websocket, x-other` is not: the server may pick the other).
fn is_websocket(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut tokens = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    tokens
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
        && tokens.next().is_none()
}

/// A reason phrase that holds a secret is scrubbed (or dropped, when the
/// scrubbed text is not a valid reason phrase).
fn scrub_reason_phrase(extensions: &mut hyper::http::Extensions, scrubber: &Scrubber) {
    let Some(reason) = extensions.get::<hyper::ext::ReasonPhrase>() else {
        return;
    };
    if let Some(replaced) = scrubber.replace(reason.as_bytes()) {
        match hyper::ext::ReasonPhrase::try_from(replaced) {
            Ok(scrubbed) => {
                extensions.insert(scrubbed);
            }
            Err(_) => {
                extensions.remove::<hyper::ext::ReasonPhrase>();
            }
        }
    }
}

/// A refusal of a request that would carry a grant's secret in clear.
fn plaintext_refused(cred: &Credential, host: &str, port: u16) -> Blocked {
    Blocked {
        rule: "plaintext_refused".to_owned(),
        message: format!(
            "keyward refused to send grant {}'s secret to {host}:{port} unencrypted; use https://, \
             or set `plaintext = true` in [grants.{}] if this host only speaks plain HTTP\n",
            cred.grant, cred.grant
        ),
    }
}

/// The request's `Host` and URI authority (`:authority` in HTTP/2) must
/// name the destination the grant matched: a front end that routes by
/// `Host` would otherwise take the secret to another tenant.
fn authority_check(
    parts: &hyper::http::request::Parts,
    host: &str,
    port: u16,
    tls: bool,
) -> Result<(), Blocked> {
    let names_target = |claimed: &[u8]| {
        let Ok(authority) = hyper::http::uri::Authority::try_from(claimed) else {
            return false;
        };
        let default_port = if tls { 443 } else { 80 };
        !authority.as_str().contains('@')
            && authority.port_u16().unwrap_or(default_port) == port
            && authority
                .host()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(host.trim_end_matches('.'))
    };
    let uri_authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let claimed = uri_authority.into_iter().chain(
        parts
            .headers
            .get_all(header::HOST)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    for name in claimed {
        if !names_target(name) {
            return Err(Blocked {
                rule: "host_mismatch".to_owned(),
                message: format!(
                    "keyward refused this request: it goes to {host}:{port}, where a grant's secret is injected, \
                     but names {:?} as its host; send it with the host it is addressed to\n",
                    String::from_utf8_lossy(name)
                ),
            });
        }
    }
    Ok(())
}

impl Proxy {
    /// Request bodies, for grants with `substitute_body`: swap the
    /// placeholders of those that may go to this destination; refuse a
    /// placeholder of any other (403); refuse a placeholder in a body too
    /// large to buffer (413). Bodiless requests and runs without such
    /// grants pass through untouched.
    async fn request_body<'r>(
        &self,
        run: &'r RunContext,
        scopes: &[Scope],
        host: &str,
        parts: &mut hyper::http::request::Parts,
        body: Incoming,
    ) -> Result<(ProxyBody, Vec<&'r str>), Response<ProxyBody>> {
        use hyper::body::Body as _;
        if run.body_placeholders.is_empty() || body.is_end_stream() {
            return Ok((
                body.map_err(|e| Box::new(e) as BoxError).boxed(),
                Vec::new(),
            ));
        }
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        let mut complete = false;
        while buf.len() <= self.options.max_substitution_body {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        &format!("keyward could not read the request body: {e}\n"),
                    ));
                }
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if !complete {
            // Too large to buffer: stream it, but fail the upload if a
            // placeholder appears, before its last byte leaves.
            let prefix = buf.freeze();
            // The length is unchanged: nothing is substituted on this path.
            let guarded = Guarded::new(prefix, body, run.body_placeholders.clone());
            return Ok((guarded.boxed(), Vec::new()));
        }
        let mut bytes = buf.to_vec();
        let mut used = Vec::new();
        for (cred, scope) in run.credentials.iter().zip(scopes) {
            let Some(placeholder) = cred.placeholder.as_ref().filter(|_| cred.substitute_body)
            else {
                continue;
            };
            let found = bytes
                .windows(placeholder.len())
                .any(|w| w == placeholder.as_bytes());
            if !found {
                continue;
            }
            if *scope != Scope::Allowed {
                return Err(blocked_response(
                    StatusCode::FORBIDDEN,
                    "placeholder_wrong_host",
                    &format!(
                        "keyward refused this request: its body carries the placeholder of grant {}, whose secret may not go to {host}\n",
                        cred.grant
                    ),
                ));
            }
            bytes = replace_bytes(
                &bytes,
                placeholder.as_bytes(),
                cred.secret.expose_secret().as_bytes(),
            );
            used.push(cred.grant.as_str());
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        if let Ok(len) = HeaderValue::from_str(&bytes.len().to_string()) {
            parts.headers.insert(header::CONTENT_LENGTH, len);
        }
        Ok((
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed(),
            used,
        ))
    }
}

fn large_body_message(max: usize) -> String {
    format!(
        "keyward refused this request: its body is over proxy.max_substitution_body ({max} bytes) and \
         carries a placeholder, which would have been sent unreplaced; send a smaller body or raise the limit\n"
    )
}

/// The error a [`Guarded`] body fails with.
#[derive(Debug)]
struct PlaceholderInLargeBody;

impl std::fmt::Display for PlaceholderInLargeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a placeholder in a request body over proxy.max_substitution_body")
    }
}

impl std::error::Error for PlaceholderInLargeBody {}

fn is_large_body_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.is::<PlaceholderInLargeBody>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Streams a large request body, failing it if a placeholder appears; a
/// carry of one byte less than the longest placeholder is held back so a
/// whole placeholder never leaves.
struct Guarded {
    prefix: Option<Bytes>,
    inner: Incoming,
    needles: Arc<Vec<Vec<u8>>>,
    carry: Vec<u8>,
    keep: usize,
    done: bool,
}

impl Guarded {
    fn new(prefix: Bytes, inner: Incoming, needles: Arc<Vec<Vec<u8>>>) -> Self {
        let keep = needles
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            prefix: Some(prefix),
            inner,
            needles,
            carry: Vec::new(),
            keep,
            done: false,
        }
    }

    fn check(&mut self, data: &[u8]) -> Result<Option<Bytes>, BoxError> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        if self
            .needles
            .iter()
            .any(|n| buf.windows(n.len()).any(|w| w == n.as_slice()))
        {
            return Err(Box::new(PlaceholderInLargeBody));
        }
        let split = buf.len().saturating_sub(self.keep);
        self.carry = buf.split_off(split);
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use hyper::body::Frame;
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            match this.check(&prefix) {
                Ok(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        loop {
            if this.done {
                if this.carry.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = std::mem::take(&mut this.carry);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match this.check(&data) {
                            Ok(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                            Ok(None) => {}
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    }
                }
            }
        }
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names: they concern this hop only, and HTTP/2
/// forbids them. `Proxy-Authorization` (the run token) never goes upstream.
/// `TE: trailers` is kept (gRPC needs it; the proxy relays trailers).
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `hay` with every `needle` replaced by `with`.
pub(crate) fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Swaps a placeholder for its secret in every header value (a value that
/// would become invalid is left as it was).
pub(crate) fn replace_in_headers(
    headers: &mut hyper::HeaderMap,
    placeholder: &[u8],
    secret: &[u8],
) {
    for value in headers.values_mut() {
        if value
            .as_bytes()
            .windows(placeholder.len())
            .any(|w| w == placeholder)
            && let Ok(mut v) =
                HeaderValue::from_bytes(&replace_bytes(value.as_bytes(), placeholder, secret))
        {
            v.set_sensitive(true);
            *value = v;
        }
    }
}

/// Joins an upgraded client and upstream; with a scrubber, the upstream's
/// WebSocket frames are scrubbed on the way. Returns the bytes relayed.
async fn join_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    scrubber: Option<Arc<Scrubber>>,
) -> u64 {
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let Some(scrubber) = scrubber else {
        return tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_or(0, |(up, down)| up + down);
    };
    let (mut client_read, client_write) = tokio::io::split(client);
    let (upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        let n = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut upstream_write).await;
        n
    };
    let down = websocket::relay_scrubbed(upstream_read, client_write, &scrubber);
    let (up, down) = tokio::join!(up, down);
    if let Err(e) = &down {
        tracing::info!("websocket relay ended: {e}");
    }
    up.unwrap_or(0) + down.unwrap_or(0)
}

impl Proxy {
    /// Relays a CONNECT tunnel byte for byte to `host:port`, connecting to
    /// an address the resolver checked.
    async fn tunnel(
        &self,
        req: Request<Incoming>,
        host: String,
        port: u16,
        mut event: EgressEvent,
        slot: Slot,
    ) -> Response<ProxyBody> {
        let sink = self.events.clone();
        let addrs = match resolve_checked(&host).await {
            Ok(addrs) => addrs,
            Err(e) => {
                event.status = 502;
                sink.record(event);
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("keyward could not resolve {host}: {e}\n"),
                );
            }
        };
        let mut upstream = None;
        let mut last_err = None;
        for mut addr in addrs {
            addr.set_port(port);
            match tokio::time::timeout(self.options.connect_timeout, TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => {
                    upstream = Some(s);
                    break;
                }
                Ok(Err(e)) => last_err = Some(e.to_string()),
                Err(_) => {
                    last_err = Some(format!(
                        "no connection within proxy.connect_timeout ({}s)",
                        self.options.connect_timeout.as_secs()
                    ));
                }
            }
        }
        let Some(mut upstream) = upstream else {
            let why = last_err.unwrap_or_else(|| "no address".to_owned());
            event.status = 502;
            sink.record(event);
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("keyward could not reach {host}:{port}: {why}\n"),
            );
        };
        let _ = upstream.set_nodelay(true);
        tokio::spawn(async move {
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    if let Ok((up, down)) =
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        event.bytes = up + down;
                    }
                }
                Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
            }
            event.status = 200;
            sink.record(event);
        });
        Response::new(empty())
    }
}

/// The block rule of a request refused because it could not be recorded.
const EVIDENCE_UNAVAILABLE: &str = "evidence_unavailable";

struct Blocked {
    rule: String,
    message: String,
}

impl Blocked {
    fn response(&self) -> Response<ProxyBody> {
        blocked_response(StatusCode::FORBIDDEN, &self.rule, &self.message)
    }
}

/// A refusal: `status`, `message` for people and the rule in
/// `x-keyward-blocked`.
fn blocked_response(status: StatusCode, rule: &str, message: &str) -> Response<ProxyBody> {
    let mut resp = text(status, message);
    if let Ok(v) = HeaderValue::from_str(rule) {
        resp.headers_mut().insert("x-keyward-blocked", v);
    }
    resp
}

/// request_filter's network rules.
fn network_check(run: &RunContext, host: &str, port: u16) -> Result<(), Blocked> {
    if is_metadata(host) {
        return Err(Blocked {
            rule: "network.metadata".to_owned(),
            message: format!(
                "keyward blocked {host}: cloud metadata endpoints are always denied (they hand out credentials)\n"
            ),
        });
    }
    if run.network == Network::Strict && !run.names_host(host, port) {
        return Err(Blocked {
            rule: "network.strict".to_owned(),
            message: format!(
                "keyward blocked {host}:{port}: this run is in strict network mode and {host} is not allowed; \
                 rerun with `--allow {host}` or add a grant for it\n"
            ),
        });
    }
    Ok(())
}

/// request_filter's policy step: the request as `http_request` with target
/// `host[:port]/path` and the method as operation. The run's own allow
/// list comes ahead of the pack: a host the run names is allowed unless a
/// rule of the pack blocks it or asks for approval explicitly.
fn policy_check(
    run: &RunContext,
    method: &str,
    host: &str,
    port: u16,
    path: &str,
) -> (Option<PolicyDecision>, Result<(), Blocked>) {
    let Some(policy) = &run.policy else {
        return (None, Ok(()));
    };
    let target = if port == 443 || port == 80 {
        format!("{host}{path}")
    } else {
        format!("{host}:{port}{path}")
    };
    let req = EvaluateRequest {
        action_type: "http_request".to_owned(),
        target: Some(target),
        requested_operation: Some(method.to_owned()),
        session_id: Some(run.run_id.clone()),
        ..EvaluateRequest::default()
    };
    let verdict = policy.evaluate(&req);
    let (decision, rule_id) =
        if verdict.decision() != Decision::Allow && !verdict.explicit && run.names_host(host, port)
        {
            (Decision::Allow, "network.allow")
        } else {
            (verdict.decision(), verdict.rule.id.as_str())
        };
    let recorded = PolicyDecision {
        decision,
        rule_id: rule_id.to_owned(),
        policy_id: policy.id().to_owned(),
    };
    let outcome = match decision {
        Decision::Allow => Ok(()),
        Decision::Block => Err(Blocked {
            rule: rule_id.to_owned(),
            message: format!(
                "keyward blocked {method} {host}{path}: policy {} rule {rule_id}: {}\n",
                policy.id(),
                verdict.rule.reason
            ),
        }),
        Decision::RequireApproval => Err(Blocked {
            rule: rule_id.to_owned(),
            message: format!(
                "keyward blocked {method} {host}{path}: policy {} rule {rule_id} requires approval{}: {}\n",
                policy.id(),
                verdict
                    .rule
                    .approver_group
                    .as_deref()
                    .map(|g| format!(" by {g}"))
                    .unwrap_or_default(),
                verdict.rule.reason
            ),
        }),
    };
    (Some(recorded), outcome)
}

/// The header a header or basic-auth credential injects (replacing any
/// the client sent). `None` for query injection, or when the name or the
/// value cannot be sent in a header (logged, without the value).
fn injected_header(cred: &Credential) -> Option<(HeaderName, HeaderValue)> {
    let secret = cred.secret.expose_secret();
    let (name, value) = match &cred.inject {
        Injection::Header { name, format } => (
            HeaderName::from_bytes(name.as_bytes()).ok(),
            format.replace("{secret}", secret),
        ),
        Injection::Basic { username } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            (Some(header::AUTHORIZATION), format!("Basic {encoded}"))
        }
        Injection::Query { .. } => return None,
    };
    let prepared = name.zip(HeaderValue::from_str(&value).ok());
    match prepared {
        Some((name, mut value)) => {
            value.set_sensitive(true);
            Some((name, value))
        }
        None => {
            tracing::warn!(
                grant = cred.grant,
                "grant's header name or value cannot be sent in HTTP; it is not injected"
            );
            None
        }
    }
}

pub(crate) fn set_query_param(path_and_query: &str, param: &str, value: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let encoded = percent_encode(value);
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(param))
        .map(str::to_owned)
        .collect();
    parts.push(format!("{param}={encoded}"));
    format!("{path}?{}", parts.join("&"))
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The run token from `Proxy-Authorization`: Basic (any user name) or Bearer.
fn proxy_token(req: &Request<Incoming>) -> Option<String> {
    let value = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, token)| token.to_owned());
    }
    None
}

fn proxy_auth_required() -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "keyward's proxy needs a valid run token (Proxy-Authorization); start the program with `keyward run`\n",
    );
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"keyward\""),
    );
    resp
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
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

/// Resolves `host`, dropping link-local addresses; a name that resolves
/// only to such addresses is an error.
async fn resolve_checked(host: &str) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !is_denied_address(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{host} resolves only to link-local or metadata addresses; denied"),
        ));
    }
    Ok(allowed)
}

/// DNS for upstream connections: resolves, then drops link-local
/// addresses, so a name cannot be rebound to a metadata service. The
/// connector connects to exactly the addresses returned here.
#[derive(Clone, Debug)]
pub struct CheckedResolver;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !is_denied_address(a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to link-local or metadata addresses; denied"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_set_once_and_encoded() {
        assert_eq!(set_query_param("/a", "key", "v 1"), "/a?key=v%201");
        assert_eq!(
            set_query_param("/a?x=1&key=old", "key", "new"),
            "/a?x=1&key=new"
        );
    }
}
