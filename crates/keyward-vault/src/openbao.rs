//! OpenBao / HashiCorp Vault KV v2 backend: how a fleet shares secrets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use age::secrecy::{ExposeSecret, SecretString};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::resolver::{ResolveError, read_secret_file};

/// How long one OpenBao request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed token lookup or renewal, the next try (sooner if the
/// token would expire first).
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// How keyward logs in to OpenBao.
#[derive(Clone)]
pub enum OpenBaoAuth {
    /// A token (from `token` or `token_file`).
    Token(SecretString),
    /// AppRole: `role_id` and a `secret_id` read from a file at each login.
    AppRole {
        /// The auth mount, usually `approle`.
        mount: String,
        /// The role id (not secret by itself).
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

impl std::fmt::Debug for OpenBaoAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenBaoAuth::Token(_) => f.write_str("Token([REDACTED])"),
            OpenBaoAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .field("secret_id_file", secret_id_file)
                .finish(),
        }
    }
}

/// `[backends.openbao]`, resolved.
#[derive(Debug, Clone)]
pub struct OpenBaoSettings {
    /// e.g. `https://bao.example.com:8200`.
    pub addr: String,
    /// Credentials.
    pub auth: OpenBaoAuth,
    /// Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Extra CA certificates (PEM) trusted for the server.
    pub ca_file: Option<PathBuf>,
}

/// A client of one OpenBao server.
pub struct OpenBao {
    settings: OpenBaoSettings,
    base: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: tokio::sync::Mutex<Option<(SecretString, Option<Instant>)>>,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OpenBao {
    /// Builds the client: system roots plus `ca_file`, TLS verification
    /// always on.
    pub fn new(settings: OpenBaoSettings) -> Result<Self, String> {
        let uri: Uri = settings
            .addr
            .parse()
            .map_err(|e| format!("addr {:?} is not a URL: {e}", settings.addr))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "addr {:?} must be http://HOST:PORT or https://HOST:PORT",
                    settings.addr
                ));
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &settings.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {} holds no certificate", ca.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let base = settings.addr.trim_end_matches('/').to_owned();
        Ok(Self {
            settings,
            base,
            client,
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ResolveError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token.expose_secret());
        }
        if let Some(ns) = &self.settings.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ResolveError::Backend(format!("cannot build an OpenBao request: {e}")))?;
        let unreachable = |e: String| {
            ResolveError::Backend(format!("OpenBao at {} is unreachable: {e}", self.base))
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(keyward_api::error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, Zeroizing::new(body.to_vec())))
    }

    async fn token(&self, fresh: bool) -> Result<SecretString, ResolveError> {
        let mut slot = self.token.lock().await;
        if !fresh
            && let Some((token, expiry)) = slot.as_ref()
            && expiry.is_none_or(|e| e > Instant::now())
        {
            return Ok(token.clone());
        }
        let (token, expiry) = match &self.settings.auth {
            OpenBaoAuth::Token(t) => (t.clone(), None),
            OpenBaoAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => self.approle_login(mount, role_id, secret_id_file).await?,
        };
        *slot = Some((token.clone(), expiry));
        Ok(token)
    }

    async fn approle_login(
        &self,
        mount: &str,
        role_id: &str,
        secret_id_file: &std::path::Path,
    ) -> Result<(SecretString, Option<Instant>), ResolveError> {
        let secret_id = read_secret_file(secret_id_file)?;
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "role_id": role_id,
                "secret_id": secret_id.expose_secret(),
            }))
            .unwrap_or_default(),
        );
        let (status, resp) = self
            .request(
                Method::POST,
                &format!("/v1/auth/{mount}/login"),
                None,
                Some(body.to_vec()),
            )
            .await?;
        if !status.is_success() {
            return Err(ResolveError::Backend(format!(
                "OpenBao AppRole login at {} failed (HTTP {}): {}",
                self.base,
                status.as_u16(),
                errors_of(&resp)
            )));
        }
        let v: Value = serde_json::from_slice(&resp)
            .map_err(|e| ResolveError::Backend(format!("OpenBao login answer is not JSON: {e}")))?;
        let token = v["auth"]["client_token"].as_str().ok_or_else(|| {
            ResolveError::Backend("OpenBao login answer has no auth.client_token".to_owned())
        })?;
        // Re-login a little before the token's lease ends.
        let expiry = v["auth"]["lease_duration"]
            .as_u64()
            .filter(|&s| s > 0)
            .map(|s| Instant::now() + Duration::from_secs(s) * 9 / 10);
        Ok((SecretString::from(token.to_owned()), expiry))
    }

    /// For a token given in the config (AppRole logs in again before its
    /// lease ends instead): renews it in the background before it expires,
    /// as Vault Agent does, so a token with a TTL outlives an idle daemon.
    /// A token that never expires needs nothing; one that cannot be renewed
    /// is reported with how long it has left. The task ends when this client
    /// is dropped (a reload builds a new one). Needs a Tokio runtime; without
    /// one nothing is renewed.
    pub fn keep_token_alive(self: &Arc<Self>) {
        if !matches!(self.settings.auth, OpenBaoAuth::Token(_)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut step = RenewStep::Lookup;
            loop {
                let wait = {
                    let Some(bao) = client.upgrade() else { return };
                    match bao.renew(step).await {
                        Ok(Some((next, wait))) => {
                            step = next;
                            wait
                        }
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!("OpenBao token: {e}");
                            match step {
                                RenewStep::Lookup => RENEW_RETRY,
                                // Renewal was due at 2/3 of the TTL: retry
                                // twice more before it runs out.
                                RenewStep::Renew { ttl } => (ttl / 9).min(RENEW_RETRY),
                            }
                        }
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// One step of [`keep_token_alive`](Self::keep_token_alive): what to do
    /// next and when, or `None` when nothing more is needed.
    async fn renew(&self, step: RenewStep) -> Result<Option<(RenewStep, Duration)>, String> {
        let token = self.token(false).await.map_err(|e| e.to_string())?;
        // Where each answer puts the TTL and whether it can be renewed.
        let (method, path, body, ttl_at, renewable_at, last_ttl) = match step {
            RenewStep::Lookup => (
                Method::GET,
                "/v1/auth/token/lookup-self",
                None,
                "/data/ttl",
                "/data/renewable",
                None,
            ),
            RenewStep::Renew { ttl } => (
                Method::POST,
                "/v1/auth/token/renew-self",
                Some(b"{}".to_vec()),
                "/auth/lease_duration",
                "/auth/renewable",
                Some(ttl),
            ),
        };
        let (status, resp) = self
            .request(method, path, Some(&token), body)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{path} at {} failed (HTTP {}): {}",
                self.base,
                status.as_u16(),
                errors_of(&resp)
            ));
        }
        let v: Value =
            serde_json::from_slice(&resp).map_err(|e| format!("{path} answer is not JSON: {e}"))?;
        let ttl = Duration::from_secs(v.pointer(ttl_at).and_then(Value::as_u64).unwrap_or(0));
        let renewable = v.pointer(renewable_at).and_then(Value::as_bool);
        if ttl.is_zero() {
            tracing::debug!("the OpenBao token does not expire");
            return Ok(None);
        }
        if renewable != Some(true) {
            tracing::warn!(
                "the OpenBao token expires in {}s and cannot be renewed; give keyward a renewable (or periodic) token, or use AppRole",
                ttl.as_secs()
            );
            return Ok(None);
        }
        if let Some(last) = last_ttl
            && ttl < last
        {
            tracing::warn!(
                "the OpenBao token is near its maximum TTL: renewed for only {}s",
                ttl.as_secs()
            );
        }
        tracing::debug!("OpenBao token valid for {}s", ttl.as_secs());
        // Renew at two thirds of the TTL: early enough to retry.
        Ok(Some((RenewStep::Renew { ttl }, ttl * 2 / 3)))
    }

    /// Reads `field` of the KV v2 secret `mount/path`. Returns the value
    /// and the lease, when the server gives one.
    pub async fn read_kv2(
        &self,
        mount: &str,
        path: &str,
        field: &str,
    ) -> Result<(SecretString, Option<Duration>), ResolveError> {
        let location = format!("{mount}/{path}");
        let api_path = format!("/v1/{mount}/data/{path}");
        let mut token = self.token(false).await?;
        let mut retried = false;
        loop {
            let (status, body) = self
                .request(Method::GET, &api_path, Some(&token), None)
                .await?;
            match status {
                StatusCode::OK => return parse_kv2(&body, &location, field),
                StatusCode::FORBIDDEN
                    if !retried && matches!(self.settings.auth, OpenBaoAuth::AppRole { .. }) =>
                {
                    // The AppRole token may have expired early: log in again once.
                    retried = true;
                    token = self.token(true).await?;
                }
                StatusCode::FORBIDDEN => {
                    return Err(ResolveError::Backend(format!(
                        "OpenBao at {} denied reading {location} (HTTP 403: {}): the token has expired or been revoked, or its policy does not allow read on {mount}/data/{path}",
                        self.base,
                        errors_of(&body)
                    )));
                }
                StatusCode::NOT_FOUND => {
                    return Err(ResolveError::Missing(format!(
                        "no secret at {location} on OpenBao at {} (HTTP 404)",
                        self.base
                    )));
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    return Err(ResolveError::Backend(format!(
                        "OpenBao at {} is sealed or unavailable (HTTP 503: {}); unseal it with `bao operator unseal`",
                        self.base,
                        errors_of(&body)
                    )));
                }
                other => {
                    return Err(ResolveError::Backend(format!(
                        "OpenBao at {} answered HTTP {} reading {location}: {}",
                        self.base,
                        other.as_u16(),
                        errors_of(&body)
                    )));
                }
            }
        }
    }
}

/// What [`OpenBao::keep_token_alive`] does next.
#[derive(Debug, Clone, Copy)]
enum RenewStep {
    /// Learn the token's TTL and whether it can be renewed.
    Lookup,
    /// Renew it; `ttl` is what it had.
    Renew { ttl: Duration },
}

fn parse_kv2(
    body: &[u8],
    location: &str,
    field: &str,
) -> Result<(SecretString, Option<Duration>), ResolveError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ResolveError::Backend(format!("OpenBao answer for {location} is not JSON: {e}"))
    })?;
    let data = &v["data"]["data"];
    let Some(map) = data.as_object() else {
        return Err(ResolveError::Missing(format!(
            "{location} on OpenBao has no current data (deleted or not KV v2)"
        )));
    };
    let value = match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(ResolveError::Backend(format!(
                "field {field} of {location} on OpenBao is empty or not a string"
            )));
        }
        None => {
            let fields: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(ResolveError::Missing(format!(
                "{location} on OpenBao has no field {field} (fields: {})",
                fields.join(", ")
            )));
        }
    };
    let lease = v["lease_duration"]
        .as_u64()
        .filter(|&s| s > 0)
        .map(Duration::from_secs);
    Ok((SecretString::from(value), lease))
}

/// The `errors` array of an OpenBao error answer.
fn errors_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no error text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv2_answers_are_parsed_with_clear_errors() {
        let ok =
            br#"{"data":{"data":{"token":"v1","other":"x"},"metadata":{}},"lease_duration":0}"#;
        let (v, lease) = parse_kv2(ok, "secret/a", "token").unwrap();
        assert_eq!(v.expose_secret(), "v1");
        assert_eq!(lease, None);
        let err = parse_kv2(ok, "secret/a", "nope").unwrap_err().to_string();
        assert!(
            err.contains("no field nope") && err.contains("other"),
            "{err}"
        );
        let deleted = br#"{"data":{"data":null}}"#;
        assert!(matches!(
            parse_kv2(deleted, "s/a", "f"),
            Err(ResolveError::Missing(_))
        ));
        assert_eq!(
            errors_of(br#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
    }

    #[test]
    fn bad_addr_is_refused() {
        let settings = |addr: &str| OpenBaoSettings {
            addr: addr.to_owned(),
            auth: OpenBaoAuth::Token(SecretString::from("t".to_owned())),
            namespace: None,
            ca_file: None,
        };
        assert!(OpenBao::new(settings("ftp://x")).is_err());
        assert!(OpenBao::new(settings("not a url")).is_err());
        assert!(OpenBao::new(settings("http://127.0.0.1:8200")).is_ok());
    }
}
