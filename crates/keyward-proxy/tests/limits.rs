//! The proxy's deadlines, against clients and upstreams that stall: an
//! idle HTTP/2 client connection is closed, and an upstream that never
//! answers gets a 504 instead of holding the child forever. And its size
//! limit on buffered bodies: a placeholder in a larger one gets a 413.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keyward_proxy::ProxyOptions;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS client trusting the proxy's CA, offering h2.
fn h2_client(h: &Harness) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(h.proxy_ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let mut h = Harness::new();
    let api = RawUpstream::tls(
        &h.identity,
        Arc::new(|_: &Received| response("200 OK", &[], b"fine")),
    )
    .await;
    let target = format!("localhost:{}", api.port);
    h.start_proxy(
        vec![bearer(&[&target])],
        ProxyOptions {
            idle_timeout: Duration::from_secs(1),
            ..ProxyOptions::default()
        },
    )
    .await;

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.proxy_port))
        .await
        .unwrap();
    tcp.write_all(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let tls = h2_client(&h)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{target}/"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"fine");

    // Nothing more is sent: the proxy ends the connection (the bound is a
    // safety net, not a measurement).
    let ended = tokio::time::timeout(Duration::from_secs(60), conn).await;
    assert!(ended.is_ok(), "the idle connection was left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_a_504_naming_the_setting() {
    let mut h = Harness::new();
    // Accepts connections and never says a word (not even TLS).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let target = format!("localhost:{port}");
    h.start_proxy(
        vec![bearer(&[&target])],
        ProxyOptions {
            response_header_timeout: Duration::from_secs(1),
            ..ProxyOptions::default()
        },
    )
    .await;
    let out = h
        .child(
            Some(&target),
            format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let reply = String::from_utf8_lossy(&out);
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    assert!(reply.contains("proxy.response_header_timeout"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_in_a_body_too_large_to_buffer_gets_a_413_naming_the_setting() {
    let mut h = Harness::new();
    let upstream = RawUpstream::tls(
        &h.identity,
        Arc::new(|_: &Received| response("HTTP/1.1 200 OK", &[], b"ok")),
    )
    .await;
    let target = format!("localhost:{}", upstream.port);
    let mut cred = bearer(&[&target]);
    cred.placeholder = Some("kw_ph_large_body".to_owned());
    cred.substitute_body = true;
    h.start_proxy(
        vec![cred],
        ProxyOptions {
            max_substitution_body: 16,
            ..ProxyOptions::default()
        },
    )
    .await;
    let body = format!("{}kw_ph_large_body{}", "a".repeat(64), "b".repeat(8));
    let out = h
        .child(
            Some(&target),
            format!(
                "POST / HTTP/1.1\r\nHost: {target}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    let reply = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 413"), "{reply}");
    assert!(
        reply.contains("x-keyward-blocked: placeholder_body"),
        "{reply}"
    );
    assert!(reply.contains("proxy.max_substitution_body"), "{reply}");
    assert!(!contains(&upstream.raw(), b"kw_ph_large_body"));
}
