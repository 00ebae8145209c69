//! CONNECT: the network rules and (for tunnels that are not intercepted)
//! the policy on the host, then either a byte-for-byte tunnel or TLS
//! interception with a certificate minted for the host, whose requests
//! each go through the pipeline.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{ProxyBody, empty};
use crate::context::{RunContext, Scope};
use crate::events::{EgressEvent, Via};
use crate::filters::request::{network_check, policy_check};
use crate::h2c::{Replayed, Tunnel};
use crate::limits::{Idle, Slot, Tracked};
use crate::proxy::{Intercept, Proxy};
use crate::record::Target;
use crate::refusal::{Refusal, Rule, proxy_auth_required};
use crate::run_token::RunToken;

/// The client's side of an intercepted tunnel, once it has started.
type Opened = Replayed<TokioIo<Upgraded>>;
type ClientTunnel = Tunnel<Opened, tokio_rustls::server::TlsStream<Opened>>;

/// What becomes of a CONNECT that passed the checks.
enum Admitted {
    /// Relayed byte for byte (`Intercept::Granted`, no grant for the host).
    Relay,
    /// Intercepted, with this certificate for the host.
    Intercept(Arc<rustls::ServerConfig>),
}

impl Proxy {
    /// A CONNECT request of `run` (authenticated with `token`).
    pub(crate) async fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        run: Arc<RunContext>,
        token: String,
        slot: Slot,
    ) -> Response<ProxyBody> {
        let authority = req.uri().authority().cloned();
        let target = Target {
            tls: true,
            host: authority
                .as_ref()
                .map(|a| a.host().to_owned())
                .unwrap_or_default(),
            port: authority.as_ref().and_then(|a| a.port_u16()).unwrap_or(443),
        };
        let mut event = self.event(&run, Via::Proxy, "CONNECT", &target, "");
        if authority.is_none() {
            let refusal = Refusal::new(Rule::BadRequest, "CONNECT needs host:port\n".to_owned());
            return self.refuse(event, refusal);
        }
        match self.admit(&run, &target, &mut event) {
            Err(refusal) => self.refuse(event, refusal),
            Ok(Admitted::Relay) => {
                self.tunnel(req, target.host, target.port, event, slot)
                    .await
            }
            Ok(Admitted::Intercept(server_config)) => {
                tokio::spawn(self.intercept(req, target, token, server_config, slot));
                Response::new(empty())
            }
        }
    }

    /// The checks on the tunnel's host: the run token, the network rules,
    /// and for a tunnel that is not intercepted the policy (which sees the
    /// host, not the paths) and the evidence log's room.
    fn admit(
        &self,
        run: &RunContext,
        target: &Target,
        event: &mut EgressEvent,
    ) -> Result<Admitted, Refusal> {
        if let Some(token) = &run.token
            && token.finds(target.host.as_bytes())
        {
            return Err(RunToken::refusal("the host name"));
        }
        network_check(run, target)?;
        if self.options.intercept == Intercept::Granted
            && run
                .credentials
                .iter()
                .all(|c| c.scope(&target.host, target.port, true) == Scope::Outside)
        {
            let (decision, verdict) = policy_check(run, "CONNECT", target, "/");
            event.decision = decision;
            verdict?;
            if let Some(refusal) = self.unrecordable(event) {
                return Err(refusal);
            }
            return Ok(Admitted::Relay);
        }
        match self.ca.server_config(&target.host) {
            Ok(server_config) => Ok(Admitted::Intercept(server_config)),
            Err(e) => Err(Refusal::new(
                Rule::CertificateUnavailable,
                format!("cannot mint a certificate for {}: {e}\n", target.host),
            )),
        }
    }

    /// An intercepted tunnel, after the 200 to its CONNECT: its requests,
    /// each through the pipeline, until it closes. It holds the client
    /// connection's slot until then.
    async fn intercept(
        self: Arc<Self>,
        req: Request<Incoming>,
        target: Target,
        token: String,
        server_config: Arc<rustls::ServerConfig>,
        _slot: Slot,
    ) {
        let Some(tunnel) = self.open(req, &target.host, server_config).await else {
            return;
        };
        // An h2c tunnel's requests go upstream in clear: only a
        // `plaintext` grant's credential may go with them.
        let target = Arc::new(Target {
            tls: !matches!(tunnel, Tunnel::Cleartext(_)),
            ..target
        });
        let idle = Idle::new(self.options.idle_timeout);
        let in_flight = idle.clone();
        let drain = self.drain.clone();
        let http1 = self.http1();
        let proxy = self;
        let svc = service_fn(move |inner: Request<Incoming>| {
            let proxy = proxy.clone();
            let token = token.clone();
            let target = target.clone();
            let in_flight = in_flight.begin();
            async move {
                let grpc = crate::grpc::is_grpc(inner.headers());
                // Re-check per request: a removed run loses access at once.
                let resp = match proxy.authority.authenticate(&token).await {
                    Some(run) => proxy.forward(&run, &target, Via::Proxy, inner).await,
                    None => proxy_auth_required(),
                };
                let resp = if grpc {
                    crate::grpc::own_answer_as_status(resp).await
                } else {
                    resp
                };
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight).boxed()))
            }
        });
        let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let served = match tunnel {
            Tunnel::Cleartext(plain) => {
                let conn = http2.serve_connection(TokioIo::new(idle.watch(plain)), svc);
                drained!(drain, conn, idle.expired())
            }
            Tunnel::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                let conn = http2.serve_connection(TokioIo::new(idle.watch(tls)), svc);
                drained!(drain, conn, idle.expired())
            }
            Tunnel::Tls(tls) => {
                let conn = http1
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades();
                drained!(drain, conn)
            }
        };
        if let Err(e) = served {
            tracing::debug!("intercepted connection ended: {e}");
        }
    }

    /// The tunnel's start: TLS with a certificate for `host`, or cleartext
    /// HTTP/2 (an insecure gRPC channel), within one deadline for both the
    /// start and the handshake. `None` (logged) when it does not start.
    async fn open(
        &self,
        req: Request<Incoming>,
        host: &str,
        server_config: Arc<rustls::ServerConfig>,
    ) -> Option<ClientTunnel> {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("CONNECT upgrade failed: {e}");
                return None;
            }
        };
        let deadline = tokio::time::Instant::now() + self.options.header_read_timeout;
        let start = crate::h2c::sniff(TokioIo::new(upgraded));
        let (stream, cleartext) = match tokio::time::timeout_at(deadline, start).await {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(e)) => {
                tracing::debug!(host, "tunnel ended at its start: {e}");
                return None;
            }
            Err(_) => {
                tracing::info!(
                    host,
                    "client sent nothing in its tunnel within proxy.header_read_timeout"
                );
                return None;
            }
        };
        if cleartext {
            return Some(Tunnel::Cleartext(stream));
        }
        let handshake = tokio_rustls::TlsAcceptor::from(server_config).accept(stream);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => Some(Tunnel::Tls(tls)),
            Ok(Err(e)) => {
                tracing::info!(
                    host,
                    "client TLS handshake failed (does it trust the keyward CA?): {e}"
                );
                None
            }
            Err(_) => {
                tracing::info!(
                    host,
                    "client did not finish its TLS handshake within proxy.header_read_timeout"
                );
                None
            }
        }
    }
}
