//! Byte-for-byte relays: a CONNECT tunnel that is not intercepted, and two
//! upgraded (WebSocket) connections joined, frames scrubbed on the way.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{ProxyBody, empty};
use crate::events::EgressEvent;
use crate::limits::Slot;
use crate::proxy::Proxy;
use crate::refusal::{Refusal, Rule};
use crate::resolve::resolve_checked;
use crate::run_token::RunToken;
use crate::scrub::Scrubber;
use crate::websocket;

/// Joins an upgraded client and upstream; with a scrubber, the upstream's
/// WebSocket frames are scrubbed on the way, and with the run's token, the
/// client's frames are scrubbed of it (masks of the same length: the token
/// never reaches the upstream). Returns the bytes relayed.
pub(crate) async fn join_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    scrubber: Option<Arc<Scrubber>>,
    token: Option<Arc<RunToken>>,
) -> u64 {
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if scrubber.is_none() && token.is_none() {
        return tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_or(0, |(up, down)| up + down);
    }
    let (mut client_read, client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        let n = match &token {
            Some(token) => {
                websocket::relay_scrubbed(&mut client_read, &mut upstream_write, token.scrubber())
                    .await
            }
            None => tokio::io::copy(&mut client_read, &mut upstream_write).await,
        };
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut upstream_write).await;
        n
    };
    let down = async {
        match &scrubber {
            Some(scrubber) => {
                websocket::relay_scrubbed(&mut upstream_read, client_write, scrubber).await
            }
            None => {
                let mut client_write = client_write;
                let n = tokio::io::copy(&mut upstream_read, &mut client_write).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut client_write).await;
                n
            }
        }
    };
    let (up, down) = tokio::join!(up, down);
    for result in [&up, &down] {
        if let Err(e) = result {
            tracing::info!("websocket relay ended: {e}");
        }
    }
    up.unwrap_or(0) + down.unwrap_or(0)
}

impl Proxy {
    /// Relays a CONNECT tunnel byte for byte to `host:port`, connecting to
    /// an address the resolver checked.
    pub(crate) async fn tunnel(
        &self,
        req: Request<Incoming>,
        host: String,
        port: u16,
        mut event: EgressEvent,
        slot: Slot,
    ) -> Response<ProxyBody> {
        let addrs = match resolve_checked(&host).await {
            Ok(addrs) => addrs,
            Err(e) => {
                // A name that resolves only to link-local or metadata
                // addresses fails here too, like an unreachable upstream
                // (the forwarded path's connector reports it the same way).
                let refusal = Refusal::new(
                    Rule::UpstreamUnresolved,
                    format!("keyward could not resolve {host}: {e}\n"),
                );
                return self.refuse(event, refusal);
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
            return self.refuse(
                event,
                Refusal::new(
                    Rule::UpstreamUnreachable,
                    format!("keyward could not reach {host}:{port}: {why}\n"),
                ),
            );
        };
        let _ = upstream.set_nodelay(true);
        let sink = self.events.clone();
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
