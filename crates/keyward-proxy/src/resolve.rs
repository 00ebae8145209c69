//! Where upstream connections go: DNS that drops link-local and metadata
//! addresses, and the pooled upstream client that uses it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use crate::ProxyOptions;
use crate::body::ProxyBody;
use crate::rules::is_denied_address;

type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, ProxyBody>;

/// The upstream client: verification always on, TLS 1.2 or newer, h2 or
/// HTTP/1.1 by ALPN, connecting only to addresses [`CheckedResolver`]
/// returned.
pub(crate) fn build_client(
    roots: rustls::RootCertStore,
    options: &ProxyOptions,
    http2_only: bool,
) -> UpstreamClient {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(CheckedResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        // Without a timer the pool never closes an idle connection: up to
        // 256 per upstream host would stay open for the daemon's lifetime.
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(options.upstream_idle_timeout)
        .http2_only(http2_only)
        .build(connector)
}

/// Resolves `host`, dropping link-local addresses; a name that resolves
/// only to such addresses is an error.
pub(crate) async fn resolve_checked(host: &str) -> std::io::Result<Vec<SocketAddr>> {
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
