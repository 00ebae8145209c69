//! What keyward's tests and benches share, so each does not carry its own
//! copy: a run authority with one fixed run, a header credential, the one
//! Rust HTTPS origin every test talks to ([`Origin`]: routes, echo,
//! trailers, gzip, slow and broken bodies, upgrades, HTTP/1.1 or h2), a
//! raw upstream that answers with exactly the bytes a test wants
//! ([`RawUpstream`]), and [`wait_for`].
#![forbid(unsafe_code)]

mod origin;
mod raw;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_proxy::{Credential, GrantHost, Injection, RunAuthority, RunContext};

pub use origin::{Answer, Connection, Origin, OriginBuilder, Received, Reply, UpgradeFn};
pub use raw::{RawEnd, RawEndingHandler, RawHandler, RawRequest, RawUpstream, response};

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

/// Polls `cond` every 10 ms until it holds or `timeout` passes; whether it
/// held. Tests wait on a condition like this, never on a bare sleep.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_for`] for async tests: yields to the runtime between polls.
pub async fn wait_for_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `request` to `origin` over TLS (ALPN http/1.1) and reads
    /// until the origin closes or breaks the connection.
    async fn exchange(origin: &Origin, request: &[u8]) -> String {
        exchange_then(origin, request, false).await
    }

    /// [`exchange`], closing the write side after `request` when `close`.
    async fn exchange_then(origin: &Origin, request: &[u8], close: bool) -> String {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(origin.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(origin.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        if close {
            tls.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        // A broken body ends in an error, not EOF: what came is the answer.
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn an_echo_origin_answers_over_tls_and_records_the_request() {
        let origin = Origin::start(&[b"http/1.1"], Reply::Echo).await;
        let answer = exchange(&origin, b"POST /p?q=1 HTTP/1.1\r\nHost: localhost\r\nX-Probe: 7\r\nAuthorization: Basic dTpwdw==\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(r#""path":"/p?q=1""#) && answer.contains(r#""body":"hi""#),
            "{answer}"
        );
        assert!(answer.contains("x-echo-auth: Basic dTpwdw=="), "{answer}");
        let got = origin.received();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].method.as_str(), got[0].header("x-probe")),
            ("POST", Some("7"))
        );
        assert_eq!(got[0].basic_auth(), Some(("u".into(), "pw".into())));
    }

    #[tokio::test]
    async fn routes_answer_with_status_trailers_gzip_streams_and_broken_bodies() {
        let origin = Origin::builder()
            .route("/teapot", |_| Answer::status(418).header("x-why", "tea"))
            .route("/trailers", |_| {
                Answer::bytes("body").trailer("grpc-status", "0")
            })
            .route("/gzip", |_| Answer::bytes("squeezed").gzip())
            .route("/big", |_| Answer::repeat(200_000))
            .route("/broken", |_| Answer::bytes("partial").broken(100_000))
            .start()
            .await;
        let get = |path: &str, extra: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
        };
        let teapot = exchange(&origin, get("/teapot", "").as_bytes()).await;
        assert!(
            teapot.starts_with("HTTP/1.1 418") && teapot.contains("x-why: tea"),
            "{teapot}"
        );
        // HTTP/1.1 trailers go only to a client that says it takes them.
        let trailers = exchange(&origin, get("/trailers", "TE: trailers\r\n").as_bytes()).await;
        assert!(
            trailers.contains("transfer-encoding: chunked") && trailers.contains("grpc-status: 0"),
            "{trailers}"
        );
        let gzip = exchange(&origin, get("/gzip", "").as_bytes()).await;
        assert!(gzip.contains("content-encoding: gzip"), "{gzip}");
        assert!(!gzip.contains("squeezed"), "{gzip}");
        let big = exchange(&origin, get("/big", "").as_bytes()).await;
        assert!(big.contains("content-length: 200000"), "{big}");
        assert_eq!(big.split_once("\r\n\r\n").unwrap().1.len(), 200_000);
        let broken = exchange(&origin, get("/broken", "").as_bytes()).await;
        assert!(broken.contains("content-length: 100000"), "{broken}");
        assert!(
            broken.ends_with("\r\n\r\npartial"),
            "cut after the part: {broken}"
        );
        let paths: Vec<String> = origin.received().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/teapot", "/trailers", "/gzip", "/big", "/broken"]);
    }

    #[tokio::test]
    async fn an_upgrade_hands_the_connection_over_and_a_cut_body_is_on_record() {
        let origin = Origin::builder()
            .route("/ws", |_| {
                Answer::upgrade("x-echo", |mut io| async move {
                    let mut buf = [0u8; 5];
                    if io.read_exact(&mut buf).await.is_ok() {
                        let _ = io.write_all(&buf).await;
                    }
                })
            })
            .start()
            .await;
        let answer = exchange(
            &origin,
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: x-echo\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
        // A body the client breaks off: on record as far as it came.
        let _ = exchange_then(
            &origin,
            b"POST /cut HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc",
            true,
        )
        .await;
        assert!(wait_for_async(Duration::from_secs(10), || origin.received().len() == 2).await);
        let cut = origin.received().pop().unwrap();
        assert_eq!((cut.path.as_str(), &cut.body[..]), ("/cut", &b"abc"[..]));
    }
}
