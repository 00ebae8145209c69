//! The forward proxy's way in: the listener, each client connection, and
//! its requests, which are CONNECT (see `connect`), absolute-form
//! `http://` requests, or origin-form requests to a base-URL endpoint
//! (see `base_url`). The run is found from the token in
//! `Proxy-Authorization` (or in a base-URL path).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::base_url;
use crate::body::ProxyBody;
use crate::events::Via;
use crate::limits::Slot;
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, Rule, proxy_auth_required};

impl Proxy {
    /// Accepts connections until `shutdown` completes, then lets requests
    /// in flight finish (up to `ProxyOptions::drain_timeout`) and returns.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let slots = self.slots.clone();
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

    /// A request on the plain proxy connection.
    async fn outer(self: Arc<Self>, req: Request<Incoming>, slot: Slot) -> Response<ProxyBody> {
        if req.method() != Method::CONNECT
            && req.uri().scheme().is_none()
            && req.uri().path().starts_with(base_url::PREFIX)
        {
            return self.base_url(req).await;
        }
        let Some(token) = proxy_token(&req) else {
            return proxy_auth_required();
        };
        let Some(run) = self.authority.authenticate(&token).await else {
            return proxy_auth_required();
        };
        if req.method() == Method::CONNECT {
            return self.connect(req, run, token, slot).await;
        }
        let uri = req.uri().clone();
        match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => {
                let target = Target {
                    tls: false,
                    host: host.to_owned(),
                    port: uri.port_u16().unwrap_or(80),
                };
                self.forward(&run, &target, Via::Proxy, req).await
            }
            _ => {
                let target = Target {
                    tls: false,
                    host: uri.host().unwrap_or_default().to_owned(),
                    port: uri.port_u16().unwrap_or(0),
                };
                let event = self.event(&run, Via::Proxy, req.method().as_str(), &target, "");
                self.refuse(
                    event,
                    Refusal::new(
                        Rule::BadRequest,
                        "this is keyward's proxy: send absolute-form http:// requests or CONNECT\n"
                            .to_owned(),
                    ),
                )
            }
        }
    }
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
