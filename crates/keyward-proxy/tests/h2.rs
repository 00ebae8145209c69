//! HTTP/2 on both sides of the proxy: a client negotiating h2 with the
//! proxy's leaf (curl --http2), and an upstream that speaks only h2.

use std::sync::Arc;

use keyward_api::Network;
use keyward_proxy::{CertificateAuthority, Credential, GrantHost, Injection, Proxy, RunContext};
use keyward_testkit::{Answer, FixedAuthority, Origin};

const TOKEN: &str = "h2-test-token";
const SECRET: &str = "h2-SECRET-value-31f9";

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
    // An upstream that speaks only h2, echoing the Authorization it got.
    let origin = Origin::builder()
        .alpn(&[b"h2"])
        .fallback(|req| {
            Answer::bytes(format!(
                "echo {}",
                req.header("authorization").unwrap_or("")
            ))
        })
        .start()
        .await;
    let (port, upstream_ca) = (origin.port(), origin.write_ca(dir.path()));
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
    let seen: Vec<_> = origin
        .received()
        .iter()
        .map(|r| {
            (
                r.version.clone(),
                r.header("authorization").unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![("HTTP/2.0".to_owned(), format!("Bearer {SECRET}"))]
    );
}
