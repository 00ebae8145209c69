//! CONNECT: the network rules and (for tunnels that are not intercepted)
//! the policy on the host, then either a byte-for-byte tunnel or TLS
//! interception with a certificate minted for the host, whose requests
//! each go through the pipeline.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{ProxyBody, empty};
use crate::context::{RunContext, Scope};
use crate::events::Via;
use crate::filters::request::{network_check, policy_check};
use crate::h2c::Tunnel;
use crate::limits::{Idle, Slot, Tracked};
use crate::proxy::{Intercept, Proxy};
use crate::record::Target;
use crate::refusal::{Refusal, Rule, proxy_auth_required};
use crate::run_token::RunToken;

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
            return self.refuse(
                event,
                Refusal::new(Rule::BadRequest, "CONNECT needs host:port\n".to_owned()),
            );
        }
        if let Some(token) = &run.token
            && token.finds(target.host.as_bytes())
        {
            return self.refuse(event, RunToken::refusal("the host name"));
        }
        if let Err(refusal) = network_check(&run, &target) {
            return self.refuse(event, refusal);
        }
        if self.options.intercept == Intercept::Granted
            && run
                .credentials
                .iter()
                .all(|c| c.scope(&target.host, target.port, true) == Scope::Outside)
        {
            // Not intercepted: the policy sees the host, not the paths.
            let (decision, verdict) = policy_check(&run, "CONNECT", &target, "/");
            event.decision = decision;
            if let Err(refusal) = verdict {
                return self.refuse(event, refusal);
            }
            if let Some(refusal) = self.unrecordable(&event) {
                return self.refuse(event, refusal);
            }
            return self
                .tunnel(req, target.host, target.port, event, slot)
                .await;
        }
        let server_config = match self.ca.server_config(&target.host) {
            Ok(cfg) => cfg,
            Err(e) => {
                return self.refuse(
                    event,
                    Refusal::new(
                        Rule::CertificateUnavailable,
                        format!("cannot mint a certificate for {}: {e}\n", target.host),
                    ),
                );
            }
        };
        let proxy = self.clone();
        tokio::spawn(async move {
            // The tunnel holds the connection's slot until it ends.
            let _slot = slot;
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return tracing::debug!("CONNECT upgrade failed: {e}"),
            };
            let host = target.host.clone();
            // One deadline for the tunnel's start and the TLS handshake.
            let deadline = tokio::time::Instant::now() + proxy.options.header_read_timeout;
            // TLS, or cleartext HTTP/2 (an insecure gRPC channel).
            let start = crate::h2c::sniff(TokioIo::new(upgraded));
            let (stream, cleartext) = match tokio::time::timeout_at(deadline, start).await {
                Ok(Ok(sniffed)) => sniffed,
                Ok(Err(e)) => return tracing::debug!(host, "tunnel ended at its start: {e}"),
                Err(_) => {
                    return tracing::info!(
                        host,
                        "client sent nothing in its tunnel within proxy.header_read_timeout"
                    );
                }
            };
            let tunnel = if cleartext {
                Tunnel::Cleartext(stream)
            } else {
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                let handshake = acceptor.accept(stream);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(tls)) => Tunnel::Tls(tls),
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
                }
            };
            let idle = Idle::new(proxy.options.idle_timeout);
            let in_flight = idle.clone();
            let drain = proxy.drain.clone();
            let http1 = proxy.http1();
            // An h2c tunnel's requests go upstream in clear: only a
            // `plaintext` grant's credential may go with them.
            let target = Arc::new(Target {
                tls: !cleartext,
                ..target
            });
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
        });
        Response::new(empty())
    }
}
