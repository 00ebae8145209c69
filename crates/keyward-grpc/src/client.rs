//! The client the CLI's `--remote` uses: TLS to a keyward server (trusting
//! the system's roots, or only a CA file given), optionally with a client
//! certificate, and the API token on every call.

use std::path::Path;

use keyward_api::{DecisionResponse, EvaluateRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::proto;
use crate::proto::keyward_client::KeywardClient;

/// A call to a remote keyward that failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL, a file or the token cannot be used.
    #[error("{0}")]
    Setup(String),
    /// No connection (refused, TLS failed, unreachable).
    #[error("cannot reach keyward at {url}: {source}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server answered with an error: its code and words, and the
    /// admin API's code when it sent one (`token_invalid`, ...).
    #[error("{}{}: {}", status.code(), api_code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(), status.message())]
    Status {
        /// The gRPC status.
        status: tonic::Status,
        /// The `keyward-error` metadata.
        api_code: Option<String>,
    },
    /// The answer is not one this client can read.
    #[error(transparent)]
    Answer(#[from] crate::convert::UnknownWord),
}

impl From<tonic::Status> for RemoteError {
    fn from(status: tonic::Status) -> Self {
        let api_code = status
            .metadata()
            .get("keyward-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        RemoteError::Status { status, api_code }
    }
}

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a call may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where and how to reach a keyward server.
pub struct RemoteOptions<'a> {
    /// `https://host:port` (or `http://` where TLS is off).
    pub url: &'a str,
    /// Trust only this CA (PEM) instead of the system's roots.
    pub ca_file: Option<&'a Path>,
    /// A client certificate and key (PEM), for mutual TLS.
    pub client_identity: Option<(&'a Path, &'a Path)>,
    /// The API token.
    pub token: &'a str,
}

/// A connection to a keyward server. Holds the token: not `Debug`.
/// Clones share the connection (HTTP/2 streams side by side).
#[derive(Clone)]
pub struct RemoteClient {
    inner: KeywardClient<Channel>,
    authorization: MetadataValue<Ascii>,
}

fn read(path: &Path) -> Result<Vec<u8>, RemoteError> {
    std::fs::read(path)
        .map_err(|e| RemoteError::Setup(format!("cannot read {}: {e}", path.display())))
}

impl RemoteClient {
    /// Connects (TLS for `https://`).
    pub async fn connect(options: &RemoteOptions<'_>) -> Result<Self, RemoteError> {
        let authorization: MetadataValue<Ascii> = format!("Bearer {}", options.token.trim())
            .parse()
            .map_err(|_| RemoteError::Setup("the token holds characters a header cannot".into()))?;
        // The token goes with every call: only over TLS.
        let scheme = options.url.split("://").next().unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(RemoteError::Setup(format!(
                "{:?}: the API token would cross the network in clear; use https://HOST:PORT \
                 (a server with TLS off is for a TLS-terminating proxy in front of it)",
                options.url
            )));
        }
        let url = format!("https{}", &options.url[scheme.len()..]);
        let mut endpoint = Channel::from_shared(url).map_err(|e| {
            RemoteError::Setup(format!(
                "{:?} is not a server URL (e.g. https://keyward.example.com:50051): {e}",
                options.url
            ))
        })?;
        endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        {
            let mut tls = ClientTlsConfig::new();
            tls = match options.ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = options.client_identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| RemoteError::Setup(format!("TLS settings: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| RemoteError::Connect {
                url: options.url.to_owned(),
                source,
            })?;
        Ok(Self {
            inner: KeywardClient::new(channel),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// A decision, as `POST /v1/evaluate` gives it.
    pub async fn evaluate(
        &mut self,
        req: &EvaluateRequest,
    ) -> Result<DecisionResponse, RemoteError> {
        let answer = self.inner.evaluate(self.request(req.into())).await?;
        Ok(DecisionResponse::try_from(answer.into_inner())?)
    }

    /// The server's health.
    pub async fn health(&mut self) -> Result<proto::HealthResponse, RemoteError> {
        Ok(self
            .inner
            .health(self.request(proto::HealthRequest {}))
            .await?
            .into_inner())
    }

    /// The server's runs.
    pub async fn list_runs(&mut self) -> Result<Vec<proto::RunSummary>, RemoteError> {
        Ok(self
            .inner
            .list_runs(self.request(proto::ListRunsRequest {}))
            .await?
            .into_inner()
            .runs)
    }
}
