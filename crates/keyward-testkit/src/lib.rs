//! What keyward's tests and benches share, so each does not carry its own
//! copy: a run authority with one fixed run, a header credential, and a
//! Rust HTTPS origin on loopback (HTTP/1.1 or h2 by ALPN, a fresh test CA
//! and a leaf for localhost) that records what it received and answers
//! with fixed bytes or an echo of the request.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_proxy::{Credential, GrantHost, Injection, RunAuthority, RunContext, ServiceIdentity};
use tokio::net::TcpListener;

/// A run authority that knows one run, by one token.
pub struct FixedAuthority {
    token: String,
    run: Arc<RunContext>,
}

impl FixedAuthority {
    /// `run`, for requests that present `token` (which, as the daemon's
    /// authority does, the context is given: it never goes upstream).
    pub fn new(token: &str, run: RunContext) -> Self {
        Self {
            token: token.to_owned(),
            run: Arc::new(run.with_token(token)),
        }
    }
}

impl RunAuthority for FixedAuthority {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<RunContext>>> + Send + 'a>> {
        let run = (token == self.token).then(|| self.run.clone());
        Box::pin(async move { run })
    }
}

/// Grant `grant`'s credential: `Authorization: Bearer <secret>` toward
/// `hosts` (patterns as in a grant, with ports), TLS only.
pub fn bearer_credential(grant: &str, hosts: &[&str], secret: &str) -> Credential {
    Credential {
        grant: grant.to_owned(),
        hosts: hosts
            .iter()
            .map(|h| GrantHost::parse(h).expect("a valid host pattern"))
            .collect(),
        inject: Injection::Header {
            name: "authorization".into(),
            format: "Bearer {secret}".into(),
        },
        secret: secrecy::SecretString::from(secret.to_owned()),
        placeholder: None,
        plaintext: false,
        substitute_body: false,
    }
}

/// How an [`Origin`] answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These bytes, status 200.
    Fixed(Bytes),
    /// The request as JSON (`method`, `path`, `headers`, `body`), status 200.
    Echo,
}

/// One request an [`Origin`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A Rust HTTPS origin on loopback.
pub struct Origin {
    pub addr: SocketAddr,
    /// The test CA its leaf chains to (PEM), for clients and the proxy's
    /// `upstream_ca`.
    pub ca_pem: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Origin {
    /// Starts an origin offering `alpn` (e.g. `[b"h2", b"http/1.1"]`;
    /// empty: HTTP/1.1), answering every request with `reply`. Needs a
    /// tokio runtime.
    pub async fn start(alpn: &[&[u8]], reply: Reply) -> Self {
        let identity = ServiceIdentity::new("localhost").expect("a test identity");
        Self::start_with(&identity, alpn, reply).await
    }

    /// Like [`Origin::start`], presenting `identity`.
    pub async fn start_with(identity: &ServiceIdentity, alpn: &[&[u8]], reply: Reply) -> Self {
        let cfg = identity.server_config(alpn).expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, log, reply) = (acceptor.clone(), log.clone(), reply.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| answer(req, log.clone(), reply.clone()));
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    }
                });
            }
        });
        Self {
            addr,
            ca_pem: identity.ca_pem.clone(),
            received,
        }
    }

    /// What it received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
    reply: Reply,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let out = match &reply {
        Reply::Fixed(bytes) => bytes.clone(),
        Reply::Echo => Bytes::from(
            serde_json::json!({
                "method": received.method,
                "path": received.path,
                "headers": received
                    .headers
                    .iter()
                    .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
                "body": String::from_utf8_lossy(&received.body),
            })
            .to_string(),
        ),
    };
    log.lock().unwrap_or_else(|p| p.into_inner()).push(received);
    Ok(Response::new(Full::new(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_echo_origin_answers_over_tls_and_records_the_request() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let origin = Origin::start(&[b"http/1.1"], Reply::Echo).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(origin.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(origin.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"POST /p?q=1 HTTP/1.1\r\nHost: localhost\r\nX-Probe: 7\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(r#""path":"/p?q=1""#) && answer.contains(r#""body":"hi""#),
            "{answer}"
        );
        let got = origin.received();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].method.as_str(), got[0].header("x-probe")),
            ("POST", Some("7"))
        );
    }
}
