//! Streams minted by a run's fd broker: no port, no token, no CA on the
//! child's side. The child speaks plain HTTP/1.1 on the stream as to a
//! reverse proxy; `Host` names the grant host (or, without one, the run's
//! single grant's host), and the request goes over TLS to it through the
//! same pipeline. The stream belongs to the run whose broker minted it:
//! attribution is by construction, and evidence says `via: broker`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::body::{ProxyBody, text};
use crate::context::RunContext;
use crate::events::Via;
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, Rule};

impl Proxy {
    /// Takes one broker stream of the run holding `token` and serves it in
    /// the background, if the proxy's connection budget
    /// (`proxy.max_connections`, shared with client connections) has room;
    /// `false` when it has none (the dial is then refused). `hold` (the
    /// caller's own per-run permit) is kept as long as the stream is served.
    pub fn admit_broker_stream(
        self: &Arc<Self>,
        stream: UnixStream,
        token: String,
        hold: impl Send + 'static,
    ) -> bool {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "proxy: {} connections and broker streams open (proxy.max_connections); broker dial refused",
                self.options.max_connections
            );
            return false;
        };
        let proxy = self.clone();
        let Some(workers) = self.workers.get().filter(|w| !w.is_empty()) else {
            tokio::spawn(async move {
                let _held = (slot, hold);
                proxy.serve_broker_stream(stream, token).await;
            });
            return true;
        };
        // Served by a core worker, like the proxy's client connections;
        // the stream moves to that worker's runtime.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("broker stream: {e}");
                return false;
            }
        };
        let turn = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        workers[turn % workers.len()].spawn(async move {
            let _held = (slot, hold);
            match UnixStream::from_std(stream) {
                Ok(stream) => proxy.serve_broker_stream(stream, token).await,
                Err(e) => tracing::warn!("broker stream: {e}"),
            }
        });
        true
    }

    /// Serves one broker stream of the run holding `token` until the child
    /// closes it (or the run ends: every request checks the run again).
    pub async fn serve_broker_stream(self: Arc<Self>, stream: UnixStream, token: String) {
        let proxy = self.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let token = token.clone();
            async move {
                let Some(run) = proxy.authority.authenticate(&token).await else {
                    return Ok::<_, Infallible>(text(
                        StatusCode::GONE,
                        "keyward: this broker stream's run has ended\n",
                    ));
                };
                Ok(proxy.broker_request(&run, req).await)
            }
        });
        let conn = self.http1().serve_connection(TokioIo::new(stream), svc);
        if let Err(e) = drained!(self.drain, conn) {
            tracing::debug!("broker stream ended: {e}");
        }
    }

    async fn broker_request(
        &self,
        run: &RunContext,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        if req.headers().contains_key(header::UPGRADE) {
            // Streams are plain HTTP/1.1 exchanges: a switch of protocols
            // (WebSocket) is not joined here, so it is refused before
            // anything goes upstream.
            return self.refuse_broker(
                run,
                &req,
                &Target::none(),
                Refusal::new(
                    Rule::BrokerUpgradeUnsupported,
                    "keyward: broker streams carry plain HTTP/1.1 requests; upgrades (WebSocket) \
                     are not supported on them yet: use the proxy for WebSocket\n"
                        .to_owned(),
                ),
            );
        }
        let named = req
            .headers()
            .get(header::HOST)
            .and_then(|v| hyper::http::uri::Authority::try_from(v.as_bytes()).ok())
            .or_else(|| req.uri().authority().cloned());
        let target = match &named {
            Some(authority) => Target {
                tls: true,
                host: authority.host().trim_end_matches('.').to_ascii_lowercase(),
                port: authority.port_u16().unwrap_or(443),
            },
            None => {
                let mut grants = run
                    .credentials
                    .iter()
                    .map(|c| &c.hosts)
                    .chain(run.withheld.iter().map(|w| &w.hosts));
                let only = match (grants.next(), grants.next()) {
                    (Some(hosts), None) => hosts.iter().find_map(|h| h.tls_destination()),
                    _ => None,
                };
                match only {
                    Some((host, port)) => Target {
                        tls: true,
                        host: host.to_owned(),
                        port,
                    },
                    None => {
                        let target = Target::none();
                        let event =
                            self.event(run, Via::Broker, req.method().as_str(), &target, "");
                        return self.refuse(
                            event,
                            Refusal::new(
 Rule::BrokerNoHost,
                                "keyward: send a Host header naming one of the run's grant hosts \
                                 (the run has more than one grant, or its grant names only wildcards)\n"
                                    .to_owned(),
                            ),
                        );
                    }
                }
            }
        };
        let granted = run
            .credentials
            .iter()
            .map(|c| &c.hosts)
            .chain(run.withheld.iter().map(|w| &w.hosts))
            .flatten()
            .any(|h| h.matches(&target.host, target.port, true));
        if !granted {
            return self.refuse_broker(
                run,
                &req,
                &target,
                Refusal::new(
 Rule::BrokerHostNotGranted,
                    format!(
                        "keyward: the broker reaches only the hosts of the run's grants, and {}:{} is none of them\n",
                        target.host, target.port
                    ),
                ),
            );
        }
        self.forward(run, &target, Via::Broker, req).await
    }

    /// A broker request refused before the pipeline, with its one record.
    fn refuse_broker(
        &self,
        run: &RunContext,
        req: &Request<Incoming>,
        target: &Target,
        refusal: Refusal,
    ) -> Response<ProxyBody> {
        let event = self.event(
            run,
            Via::Broker,
            req.method().as_str(),
            target,
            req.uri().path(),
        );
        self.refuse(event, refusal)
    }
}
