//! Serving the API: the `keyward.v1.Keyward` service and the standard
//! `grpc.health.v1.Health` (for load balancers) on one listener, over TLS
//! unless TLS was switched off.

use std::future::Future;
use std::sync::Arc;

use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::proto::keyward_server::KeywardServer;
use crate::service::{Backend, Gate, KeywardService};
use crate::tls::TlsFiles;

/// Why the listener stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be read.
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
    /// The transport failed (a bad certificate or key is found here).
    #[error("the gRPC listener failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes. `tls: None` serves
/// plain HTTP/2 (only where the network itself is trusted).
pub async fn serve<B: Backend, G: Gate>(
    listener: tokio::net::TcpListener,
    tls: Option<&TlsFiles>,
    backend: Arc<B>,
    gate: Arc<G>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KeywardServer<KeywardService<B, G>>>()
        .await;
    // The whole server answers too (the empty service name).
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    builder
        .add_service(health_service)
        .add_service(KeywardServer::new(KeywardService::new(backend, gate)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}
