//! HTTP/2 on both sides of the proxy: a client negotiating h2 with the
//! proxy's leaf (curl --http2), and an upstream that speaks only h2.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_api::Network;
use keyward_proxy::{CertificateAuthority, Credential, GrantHost, Injection, Proxy, RunContext};
use keyward_testkit::FixedAuthority;

const TOKEN: &str = "h2-test-token";
const SECRET: &str = "h2-SECRET-value-31f9";

/// (version, authorization) of each request the upstream saw.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn h2_upstream(dir: &std::path::Path) -> (u16, std::path::PathBuf, Seen) {
    let identity = keyward_proxy::ServiceIdentity::new("localhost").unwrap();
    let ca_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_path, &identity.ca_pem).unwrap();
    let cfg = identity.server_config(&[b"h2"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    record
                        .lock()
                        .unwrap()
                        .push((format!("{:?}", req.version()), auth.clone()));
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("echo {auth}")),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_path, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_and_h2_upstream_through_the_proxy() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "curl is missing");
        eprintln!("SKIPPED: no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, upstream_ca, seen) = h2_upstream(dir.path()).await;
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
    let ctx = RunContext::new(
        "run_h2".into(),
        Network::Permissive,
        vec![],
        vec![Credential {
            grant: "h2".into(),
            hosts: vec![GrantHost::parse(&format!("localhost:{port}")).unwrap()],
            inject: Injection::Header {
                name: "authorization".into(),
                format: "Bearer {secret}".into(),
            },
            secret: secrecy::SecretString::from(SECRET.to_owned()),
            placeholder: None,
            plaintext: false,
            substitute_body: false,
        }],
    );
    let proxy = Arc::new(
        Proxy::new(
            ca,
            Arc::new(FixedAuthority::new(TOKEN, ctx)),
            std::slice::from_ref(&upstream_ca),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    tokio::spawn(proxy.serve(listener, std::future::pending()));

    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-w", "\n%{http_version}"])
        .arg("--cacert")
        .arg(dir.path().join("ca/public/ca.pem"))
        .arg("-x")
        .arg(format!("http://run:{TOKEN}@127.0.0.1:{proxy_port}"))
        .arg(format!("https://localhost:{port}/h2"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with("\n2"),
        "the client spoke h2 with the proxy: {stdout}"
    );
    assert!(
        stdout.starts_with("echo Bearer [REDACTED]"),
        "scrubbed echo: {stdout}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![("HTTP/2.0".to_owned(), format!("Bearer {SECRET}"))]
    );
}
