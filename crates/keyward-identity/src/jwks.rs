//! The issuer's signing keys: a JWKS fetched over HTTPS (or read from a
//! file), cached, refetched when a token names an unknown `kid` (at most once
//! per interval) or when the cache is older than its TTL. A failed fetch
//! keeps the keys already cached.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::failure::{AuthFailure, Check};

/// Time to open the TCP connection and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the whole fetch, headers and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One usable verification key.
pub(crate) struct SigningKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

type KeySet = Arc<HashMap<String, Arc<SigningKey>>>;

struct Cached {
    keys: KeySet,
    fetched: Option<Instant>,
}

struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Where keys come from.
enum Source {
    /// Read once, at load.
    File,
    Url {
        uri: Uri,
        client: Box<HttpsClient>,
    },
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Cache bounds for a fetched JWKS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub min_refetch: Duration,
    pub ttl: Duration,
    pub max_bytes: usize,
}

pub(crate) struct Jwks {
    source: Source,
    bounds: Bounds,
    cached: RwLock<Cached>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl Jwks {
    /// Keys from a JWKS file.
    pub fn from_file(path: &Path, bounds: Bounds) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.len() > bounds.max_bytes {
            return Err(format!(
                "{} is larger than jwks_max_bytes ({})",
                path.display(),
                bounds.max_bytes
            ));
        }
        Self::from_document(&bytes, bounds).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Keys from a JWKS document read once (a file's contents).
    pub fn from_document(document: &[u8], bounds: Bounds) -> Result<Self, String> {
        let keys = parse(document)?;
        Ok(Self::with(Source::File, bounds, Some(keys)))
    }

    /// Keys fetched from `url` (HTTPS only), trusting `ca_file` alone when
    /// given, else the system's roots. Nothing is fetched until needed.
    pub fn from_url(url: &str, ca_file: Option<&Path>, bounds: Bounds) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(format!(
                "{url:?} must be an https:// URL (keys fetched in clear text could be swapped)"
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(ca) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<_, _>>())
                    .map_err(|e| format!("cannot read jwks_ca_file {}: {e}", ca.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "jwks_ca_file {} holds no certificate",
                        ca.display()
                    ));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("bad certificate in {}: {e}", ca.display()))?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Box::new(Client::builder(TokioExecutor::new()).build(connector));
        Ok(Self::with(Source::Url { uri, client }, bounds, None))
    }

    fn with(source: Source, bounds: Bounds, keys: Option<KeySet>) -> Self {
        let fetched = keys.as_ref().map(|_| Instant::now());
        Self {
            source,
            bounds,
            cached: RwLock::new(Cached {
                keys: keys.unwrap_or_default(),
                fetched,
            }),
            fetch: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                last_error: None,
            }),
        }
    }

    fn lookup(&self, kid: &str) -> (Option<Arc<SigningKey>>, bool, bool) {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        let stale = cached
            .fetched
            .is_none_or(|t| t.elapsed() >= self.bounds.ttl);
        (cached.keys.get(kid).cloned(), stale, cached.keys.is_empty())
    }

    /// The key named `kid`.
    pub async fn key(&self, kid: &str) -> Result<Arc<SigningKey>, AuthFailure> {
        let (hit, stale, _) = self.lookup(kid);
        if let Some(key) = &hit
            && (!stale || matches!(self.source, Source::File))
        {
            return Ok(key.clone());
        }
        let fetch_error = self.refresh().await;
        let (found, _, empty) = self.lookup(kid);
        match found {
            Some(key) => Ok(key),
            None if empty => Err(AuthFailure::new(
                Check::JwksUnavailable,
                format!(
                    "no signing keys are cached and the JWKS could not be fetched: {}",
                    fetch_error.unwrap_or_else(|| "a fetch was tried too recently".to_owned())
                ),
            )),
            None => Err(AuthFailure::new(
                Check::UnknownKid,
                format!("no key with kid {kid:?} in the issuer's JWKS"),
            )),
        }
    }

    /// Fetches the JWKS unless one was tried within `min_refetch`; the
    /// last error, if the last attempt failed.
    async fn refresh(&self) -> Option<String> {
        let Source::Url { uri, client } = &self.source else {
            return None;
        };
        let mut state = self.fetch.lock().await;
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.bounds.min_refetch)
        {
            return state.last_error.clone();
        }
        state.last_attempt = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(client, uri, self.bounds.max_bytes)).await {
            Ok(Ok(keys)) => {
                tracing::info!(url = %uri, keys = keys.len(), "JWKS fetched");
                *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Cached {
                    keys,
                    fetched: Some(Instant::now()),
                };
                state.last_error = None;
            }
            Ok(Err(e)) => state.last_error = Some(e),
            Err(_) => {
                state.last_error = Some(format!("no answer within {}s", FETCH_TIMEOUT.as_secs()));
            }
        }
        if let Some(e) = &state.last_error {
            tracing::warn!(url = %uri, "JWKS fetch failed (cached keys, if any, stay in use): {e}");
        }
        state.last_error.clone()
    }
}

async fn fetch(client: &HttpsClient, uri: &Uri, max_bytes: usize) -> Result<KeySet, String> {
    let req = Request::get(uri.clone())
        .header("accept", "application/json")
        .body(Empty::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{uri} is unreachable: {}", error_chain(&e)))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{uri} answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("{uri} sent a JWKS larger than jwks_max_bytes ({max_bytes})")
            } else {
                format!("reading {uri}: {e}")
            }
        })?
        .to_bytes();
    parse(&body).map_err(|e| format!("{uri}: {e}"))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The usable keys of a JWKS document: RSA keys (RS256) and P-256 keys
/// (ES256) with a `kid`, not marked for encryption. Keys of other kinds,
/// symmetric (`oct`) keys above all, are skipped.
pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = HashMap::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, Arc::new(SigningKey { alg, key }));
    }
    if keys.is_empty() {
        return Err("no usable RS256 or ES256 signing key with a kid".to_owned());
    }
    Ok(Arc::new(keys))
}
