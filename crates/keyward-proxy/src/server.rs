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

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_api::{Decision, EvaluateRequest, Network};
use keyward_policy::Policy;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpStream};

use crate::ca::CertificateAuthority;
use crate::events::{EgressEvent, EgressSink, LogSink, Metered, PolicyDecision};
use crate::rules::{AllowRule, HostPattern, Injection, is_link_local, is_metadata};
use crate::scrub::{Needles, Scrubbed, replace_all};
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
    pub hosts: Vec<HostPattern>,
    /// How.
    pub inject: Injection,
    /// The value.
    pub secret: SecretString,
    /// The placeholder the child holds instead, if any.
    pub placeholder: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("grant", &self.grant)
            .field("secret", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl Credential {
    fn applies_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
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
    /// (secret, placeholder or `[REDACTED]`) for every credential: what
    /// response scrubbing replaces.
    scrub: Needles,
    /// Every credential's placeholder: what a request body is checked for.
    placeholders: Arc<Vec<Vec<u8>>>,
    /// Per credential (same order), the header it injects, made once here
    /// rather than per request; `None` for query injection or a header
    /// that cannot be sent (warned about when the context is made).
    headers: Vec<Option<(HeaderName, HeaderValue)>>,
    /// The policy every request is evaluated against (`http_request`).
    pub policy: Option<Arc<Policy>>,
}

impl RunContext {
    /// A run's context; scrubbing and placeholder needles are built here,
    /// not per request.
    pub fn new(
        run_id: String,
        network: Network,
        allow: Vec<AllowRule>,
        credentials: Vec<Credential>,
    ) -> Self {
        let scrub = credentials
            .iter()
            .map(|c| {
                let replacement = c.placeholder.as_deref().unwrap_or("[REDACTED]");
                (
                    c.secret.expose_secret().as_bytes().to_vec(),
                    replacement.as_bytes().to_vec(),
                )
            })
            .collect();
        let placeholders = credentials
            .iter()
            .filter_map(|c| c.placeholder.as_ref().map(|p| p.as_bytes().to_vec()))
            .collect();
        let headers = credentials.iter().map(injected_header).collect();
        Self {
            run_id,
            network,
            allow,
            credentials,
            scrub: Arc::new(scrub),
            placeholders: Arc::new(placeholders),
            headers,
            policy: None,
        }
    }

    /// Evaluates every request of the run against `policy`.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Whether the run names `host:port` itself: an `--allow` pattern or a
    /// grant's host.
    fn names_host(&self, host: &str, port: u16) -> bool {
        self.allow.iter().any(|a| a.matches(host, port))
            || self.credentials.iter().any(|c| c.applies_to(host))
    }
}

/// Where the proxy learns which run a token belongs to. Called for each
/// request, so a removed run loses access at once.
pub trait RunAuthority: Send + Sync + 'static {
    /// The run holding `token`, if any.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Arc<RunContext>>>;
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
    ($drain:expr, $conn:expr) => {{
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
    pub drain_timeout: std::time::Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            max_substitution_body: 1 << 20,
            intercept: Intercept::All,
            drain_timeout: std::time::Duration::from_secs(10),
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
            build_client(roots)
        })
    }
}

/// Responses to requests that carried a secret, up to this size and of
/// known length, are scrubbed whole rather than streamed.
const SCRUB_IN_ONE_PIECE: u64 = 64 * 1024;

type UpstreamClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, ProxyBody>;

fn build_client(roots: rustls::RootCertStore) -> UpstreamClient {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(CheckedResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
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
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    drop(listener);
                    return self.drain.close(self.options.drain_timeout).await;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let proxy = self.clone();
                        tokio::spawn(async move { proxy.connection(stream, peer).await });
                    }
                    Err(e) => {
                        tracing::error!("proxy accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let proxy = self.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.outer(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        if let Err(e) = drained!(self.drain, conn) {
            tracing::debug!(%peer, "proxy connection ended: {e}");
        }
    }

    /// A request on the plain proxy connection: CONNECT or absolute-form.
    async fn outer(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
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
                && !run.credentials.iter().any(|c| c.applies_to(&host))
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
                return tunnel(req, host, port, event, self.events.clone()).await;
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
            tokio::spawn(async move {
                let upgraded = match hyper::upgrade::on(req).await {
                    Ok(u) => u,
                    Err(e) => return tracing::debug!("CONNECT upgrade failed: {e}"),
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                let tls = match acceptor.accept(TokioIo::new(upgraded)).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        return tracing::info!(
                            host,
                            "client TLS handshake failed (does it trust the keyward CA?): {e}"
                        );
                    }
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |inner: Request<Incoming>| {
                    let proxy = proxy.clone();
                    let token = token.clone();
                    let host = host.clone();
                    async move {
                        // Re-check per request: a removed run loses access at once.
                        let Some(run) = proxy.authority.authenticate(&token).await else {
                            return Ok::<_, Infallible>(proxy_auth_required());
                        };
                        Ok(proxy.forward(&run, "https", &host, port, inner).await)
                    }
                });
                let drain = drain_for_inner.clone();
                let served = if h2 {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc);
                    drained!(drain, conn)
                } else {
                    let conn = hyper::server::conn::http1::Builder::new()
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
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // An HTTP/1.1 upgrade (WebSocket): the handshake goes through the
        // same pipeline (injection included); after a 101 both sides are
        // joined, and when the handshake carried a secret the server's
        // WebSocket frames are scrubbed (see websocket.rs).
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

        // upstream_request_filter: placeholders, then injection.
        let mut injected: Vec<&str> = Vec::new();
        let mut path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        for cred in &run.credentials {
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
            if !cred.applies_to(host) {
                self.finish(event, 403, Some("placeholder_wrong_host"));
                return blocked_response(
                    StatusCode::FORBIDDEN,
                    "placeholder_wrong_host",
                    &format!(
                        "keyward refused this request: it carries the placeholder of grant {}, whose secret may not go to {host}\n",
                        cred.grant
                    ),
                );
            }
            let secret = cred.secret.expose_secret();
            replace_in_headers(
                &mut parts.headers,
                &[(placeholder.as_bytes().to_vec(), secret.as_bytes().to_vec())],
            );
            path_and_query = path_and_query.replace(placeholder.as_str(), secret);
            injected.push(&cred.grant);
        }
        let granted = run.credentials.iter().zip(&run.headers);
        for (cred, prepared) in granted.filter(|(c, _)| c.applies_to(host)) {
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
        let scrub_frames = !injected.is_empty()
            && upgrade
                .as_ref()
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if let Some(protocol) = &upgrade {
            parts.headers.insert(header::UPGRADE, protocol.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if scrub_frames {
            // Compressed frames could not be scrubbed.
            parts.headers.remove("sec-websocket-extensions");
        }
        // The upstream connection negotiates its own version (ALPN); the
        // client's (h2 or HTTP/1.1 with the proxy) does not carry over.
        parts.version = hyper::Version::HTTP_11;
        let authority = if (scheme == "https" && port == 443) || (scheme == "http" && port == 80) {
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
        let body = match self.request_body(run, host, &mut parts, body).await {
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

        let resp = match self.client().request(upstream_req).await {
            Ok(resp) => resp,
            Err(e) if is_large_body_refusal(&e) => {
                event.injected.clear();
                self.finish(event, 413, Some("placeholder_body"));
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &large_body_message(self.options.max_substitution_body),
                );
            }
            Err(e) => {
                let why = keyward_api::error_chain(&e);
                self.finish(event, 502, None);
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("keyward could not reach {authority}: {why}\n"),
                );
            }
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            event.status = 101;
            let sink = self.events.clone();
            let masks = scrub_frames.then(|| websocket::masks(&run.scrub));
            let mut resp = resp;
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        event.bytes = join_upgraded(client, upstream, masks).await;
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
                sink.record(event);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        event.status = status.as_u16();

        // response_filter: a response to a request that carried a secret
        // is scrubbed of every secret of the run.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = if injected.is_empty() {
            body.map_err(|e| Box::new(e) as BoxError).boxed()
        } else {
            replace_in_headers(&mut parts.headers, &run.scrub);
            use hyper::body::Body as _;
            // The declared length must be the body's: not so for HEAD or 304.
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n <= SCRUB_IN_ONE_PIECE)
                && declared == body.size_hint().exact()
            {
                // A small body of known length is scrubbed whole and keeps
                // an exact (new) Content-Length: no chunked framing, one
                // write toward the client.
                let whole = match body.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) => {
                        self.finish(event, 502, None);
                        return text(
                            StatusCode::BAD_GATEWAY,
                            &format!("keyward lost the response of {authority}: {e}\n"),
                        );
                    }
                };
                let whole = replace_all(&whole, &run.scrub).map_or(whole, Bytes::from);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
                Full::new(whole).map_err(|never| match never {}).boxed()
            } else {
                // Lengths change when a secret is replaced.
                parts.headers.remove(header::CONTENT_LENGTH);
                Scrubbed::new(body, run.scrub.clone())
                    .map_err(|e| Box::new(e) as BoxError)
                    .boxed()
            }
        };
        // logging: the event goes out when the body is done, with its size.
        let body = Metered::new(body, event, self.events.clone());
        Response::from_parts(parts, body.boxed())
    }
}

impl Proxy {
    /// Request bodies: swap placeholders of credentials that apply to
    /// `host`; refuse a placeholder of any other credential (403); refuse a
    /// placeholder in a body too large to buffer (413). Bodiless requests
    /// and runs without placeholders pass through untouched.
    async fn request_body<'r>(
        &self,
        run: &'r RunContext,
        host: &str,
        parts: &mut hyper::http::request::Parts,
        body: Incoming,
    ) -> Result<(ProxyBody, Vec<&'r str>), Response<ProxyBody>> {
        use hyper::body::Body as _;
        if run.placeholders.is_empty() || body.is_end_stream() {
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
            let guarded = Guarded::new(prefix, body, run.placeholders.clone());
            return Ok((guarded.boxed(), Vec::new()));
        }
        let mut bytes = buf.to_vec();
        let mut used = Vec::new();
        for cred in &run.credentials {
            let Some(placeholder) = &cred.placeholder else {
                continue;
            };
            let found = bytes
                .windows(placeholder.len())
                .any(|w| w == placeholder.as_bytes());
            if !found {
                continue;
            }
            if !cred.applies_to(host) {
                return Err(blocked_response(
                    StatusCode::FORBIDDEN,
                    "placeholder_wrong_host",
                    &format!(
                        "keyward refused this request: its body carries the placeholder of grant {}, whose secret may not go to {host}\n",
                        cred.grant
                    ),
                ));
            }
            let needle = [(
                placeholder.as_bytes().to_vec(),
                cred.secret.expose_secret().as_bytes().to_vec(),
            )];
            if let Some(replaced) = replace_all(&bytes, &needle) {
                bytes = replaced;
            }
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
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Replaces needles in every header value (a value that would become
/// invalid is left as it was).
fn replace_in_headers(headers: &mut hyper::HeaderMap, needles: &[(Vec<u8>, Vec<u8>)]) {
    for value in headers.values_mut() {
        if let Some(v) = replace_all(value.as_bytes(), needles)
            .and_then(|replaced| HeaderValue::from_bytes(&replaced).ok())
        {
            *value = v;
        }
    }
}

/// Joins an upgraded client and upstream; with `masks`, the upstream's
/// WebSocket frames are scrubbed on the way. Returns the bytes relayed.
async fn join_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    masks: Option<Vec<(Vec<u8>, Vec<u8>)>>,
) -> u64 {
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let Some(masks) = masks else {
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
    let down = websocket::relay_scrubbed(upstream_read, client_write, &masks);
    let (up, down) = tokio::join!(up, down);
    if let Err(e) = &down {
        tracing::info!("websocket relay ended: {e}");
    }
    up.unwrap_or(0) + down.unwrap_or(0)
}

/// Relays a CONNECT tunnel byte for byte to `host:port`, connecting to an
/// address the resolver checked.
async fn tunnel(
    req: Request<Incoming>,
    host: String,
    port: u16,
    mut event: EgressEvent,
    sink: Arc<dyn EgressSink>,
) -> Response<ProxyBody> {
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
        match TcpStream::connect(addr).await {
            Ok(s) => {
                upstream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(mut upstream) = upstream else {
        let why = last_err.map_or("no address".to_owned(), |e| e.to_string());
        event.status = 502;
        sink.record(event);
        return text(
            StatusCode::BAD_GATEWAY,
            &format!("keyward could not reach {host}:{port}: {why}\n"),
        );
    };
    let _ = upstream.set_nodelay(true);
    tokio::spawn(async move {
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

fn set_query_param(path_and_query: &str, param: &str, value: &str) -> String {
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
        .filter(|a| !is_link_local(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{host} resolves only to link-local addresses (metadata services); denied"),
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
                .filter(|a| !is_link_local(a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to link-local addresses (metadata services); denied"
                    ),
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
