//! Proxy figures against a direct connection, measured in the same run and
//! process: a local HTTPS upstream (hyper + rustls, small responses), a
//! client speaking HTTP/1.1 keep-alive either directly or through the proxy
//! at concurrency 1 and 64; the cost of a new CONNECT + TLS handshake; and
//! the process's peak RSS (client, proxy and upstream together, so an upper
//! bound for the proxy); and what scrubbing every response costs (a run
//! that holds a secret against one that holds none, same requests).
//!
//! "Through keyward" is the daemon's per-request pipeline: CONNECT, TLS
//! interception with a cached leaf, the built-in policy consulted, header
//! injection, scrubbing, and an evidence record (hash-chained, fsynced) per
//! request. Two upstreams: one speaking only HTTP/1.1, and one that also
//! offers HTTP/2 (as api.github.com and most API hosts do), which the proxy
//! then uses to multiplex its upstream traffic; the direct client speaks
//! HTTP/1.1 to both.
//!
//! Run: `bash bench/proxy.sh` (or `cargo bench -p keyward-proxy --bench proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use keyward_api::Network;
use keyward_evidence::{DEFAULT_SEGMENT_BYTES, EvidenceLog, LogOptions};
use keyward_proxy::{CertificateAuthority, Credential, EvidenceSink, Proxy, RunContext};
use keyward_testkit::{FixedAuthority, Origin, Reply, bearer_credential};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "bench-token";
/// Rounds of direct-then-proxied load per concurrency level.
const ROUNDS: usize = 7;

/// A TLS client trusting `ca_pem`, offering `alpn` (none: HTTP/1.1).
fn client_tls(ca_pem: &std::path::Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One client connection, speaking what its TLS handshake agreed.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// Opens a keep-alive connection to the upstream, directly or through the
/// proxy's CONNECT.
async fn connect(
    target: SocketAddr,
    proxy: Option<SocketAddr>,
    tls: &tokio_rustls::TlsConnector,
) -> Sender {
    let mut tcp = TcpStream::connect(proxy.unwrap_or(target)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if proxy.is_some() {
        let req = format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n",
            port = target.port()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    let tls = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        return Sender::H2(sender);
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    Sender::H1(sender)
}

async fn one(sender: &mut Sender, port: u16) -> Duration {
    let t = Instant::now();
    let resp = match sender {
        Sender::H1(sender) => {
            let req = Request::get("/bench")
                .header("host", format!("localhost:{port}"))
                .body(Empty::new())
                .unwrap();
            sender.ready().await.unwrap();
            sender.send_request(req).await.unwrap()
        }
        Sender::H2(sender) => {
            let req = Request::get(format!("https://localhost:{port}/bench"))
                .body(Empty::new())
                .unwrap();
            sender.ready().await.unwrap();
            sender.send_request(req).await.unwrap()
        }
    };
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.into_body().collect().await.unwrap();
    t.elapsed()
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(
    target: SocketAddr,
    proxy: Option<SocketAddr>,
    tls: &tokio_rustls::TlsConnector,
    concurrency: usize,
    per_conn: usize,
) -> Figures {
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let mut s = connect(target, proxy, tls).await;
        one(&mut s, target.port()).await; // warm
        senders.push(s);
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_conn);
                for _ in 0..per_conn {
                    lat.push(one(&mut s, target.port()).await);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    Figures {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The bench's credential, injected toward `hosts`.
fn credential(hosts: &[String]) -> Credential {
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    bearer_credential("bench", &hosts, "bench-secret-value")
}

/// A proxy for one run holding `credentials`, with the daemon's pipeline
/// (built-in policy, an evidence record per request); returns its address.
async fn spawn_proxy(
    dir: &tempfile::TempDir,
    upstream_ca: &std::path::Path,
    evidence: &Arc<EvidenceLog>,
    credentials: Vec<Credential>,
) -> SocketAddr {
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
    let ctx = RunContext::new("run_bench".into(), Network::Permissive, vec![], credentials)
        .with_policy(Arc::new(keyward_policy::baseline()));
    let proxy = Proxy::new(
        ca,
        Arc::new(FixedAuthority::new(TOKEN, ctx)),
        &[upstream_ca.to_owned()],
    )
    .unwrap()
    .with_sink(Arc::new(EvidenceSink(evidence.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(proxy).serve(listener, std::future::pending()));
    addr
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let identity = keyward_proxy::ServiceIdentity::new("localhost").unwrap();
        let upstream_ca = dir.path().join("upstream-ca.pem");
        std::fs::write(&upstream_ca, &identity.ca_pem).unwrap();
        let ok = || Reply::Fixed(Bytes::from_static(b"{\"ok\":true}"));
        let http1_only = Origin::start_with(&identity, &[b"http/1.1"], ok()).await.addr;
        let with_h2 = Origin::start_with(&identity, &[b"h2", b"http/1.1"], ok()).await.addr;
        let grant_hosts: Vec<String> = [http1_only, with_h2]
            .iter()
            .map(|a| format!("localhost:{}", a.port()))
            .collect();
        let (evidence, _) = EvidenceLog::open(LogOptions {
            dir: dir.path().join("audit"),
            signer: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        })
        .unwrap();
        let evidence = Arc::new(evidence);
        let proxy_addr = spawn_proxy(&dir, &upstream_ca, &evidence, vec![credential(&grant_hosts)]).await;

        let direct_tls = client_tls(&upstream_ca, &[]);
        let direct_h2_tls = client_tls(&upstream_ca, &[b"h2"]);
        let proxied_tls = client_tls(&dir.path().join("ca/public/ca.pem"), &[]);
        let rss_before = rss_kb("VmRSS:");

        println!("keyward proxy bench: HTTPS, HTTP/1.1 keep-alive client, small responses (one process, 2 cores shared)");
        println!("through keyward = interception + built-in policy + header injection + scrubbing + one evidence record per request");
        // Direct and proxied alternate in rounds and the round with the
        // median throughput ratio is shown: this machine's noise moves both
        // sides of one round together far more than it moves their ratio.
        for (name, target) in [("HTTP/1.1-only upstream", http1_only), ("upstream offering h2", with_h2)] {
            for (concurrency, per_conn) in [(1usize, 1000usize), (64, 60)] {
                let mut rounds = Vec::new();
                for _ in 0..ROUNDS {
                    let direct = load(target, None, &direct_tls, concurrency, per_conn).await;
                    let proxied = load(target, Some(proxy_addr), &proxied_tls, concurrency, per_conn).await;
                    rounds.push((proxied.rps / direct.rps, direct, proxied));
                }
                rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
                let (ratio, direct, proxied) = &rounds[ROUNDS / 2];
                println!("{name}, concurrency {concurrency} (median of {ROUNDS} rounds; ratios {}):", ratios.join(" "));
                println!("  direct           {:>9.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us", direct.rps, us(direct.p50), us(direct.p99));
                println!("  through keyward  {:>9.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us", proxied.rps, us(proxied.p50), us(proxied.p99));
                println!(
                    "  ratio b/a        throughput {ratio:.2}x   added p50 {:+.1} us",
                    us(proxied.p50) - us(direct.p50)
                );
                if target == with_h2 {
                    // How much of that the upstream's HTTP/2 serving costs by
                    // itself: a direct client speaking h2 to it.
                    let h2 = load(target, None, &direct_h2_tls, concurrency, per_conn).await;
                    println!(
                        "  direct over h2   {:>9.0} req/s  p50 {:>7.1} us  (through keyward adds {:+.1} us to that)",
                        h2.rps,
                        us(h2.p50),
                        us(proxied.p50) - us(h2.p50)
                    );
                }
            }
        }
        let target = http1_only;

        // What scrubbing every response costs: the same requests, carrying
        // no secret, through a run that holds one (for another host: the
        // response is scrubbed all the same) and through a run that holds
        // none (nothing to scrub).
        let holding = spawn_proxy(&dir, &upstream_ca, &evidence, vec![credential(&["elsewhere.invalid".to_owned()])]).await;
        let holding_none = spawn_proxy(&dir, &upstream_ca, &evidence, Vec::new()).await;
        println!("scrubbing every response: a run holding a secret vs one holding none, requests carrying none, HTTP/1.1-only upstream");
        for (concurrency, per_conn) in [(1usize, 1000usize), (64, 60)] {
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                let none = load(target, Some(holding_none), &proxied_tls, concurrency, per_conn).await;
                let scrubbed = load(target, Some(holding), &proxied_tls, concurrency, per_conn).await;
                rounds.push((scrubbed.rps / none.rps, none, scrubbed));
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
            let (ratio, none, scrubbed) = &rounds[ROUNDS / 2];
            println!("concurrency {concurrency} (median of {ROUNDS} rounds; ratios {}):", ratios.join(" "));
            println!("  nothing to scrub {:>9.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us", none.rps, us(none.p50), us(none.p99));
            println!("  scrubbed         {:>9.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us", scrubbed.rps, us(scrubbed.p50), us(scrubbed.p99));
            println!(
                "  ratio b/a        throughput {ratio:.2}x   added p50 {:+.1} us",
                us(scrubbed.p50) - us(none.p50)
            );
        }

        let n = 200;
        let mut direct_new = Vec::new();
        let mut proxied_new = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let mut s = connect(target, None, &direct_tls).await;
            one(&mut s, target.port()).await;
            direct_new.push(t.elapsed());
            let t = Instant::now();
            let mut s = connect(target, Some(proxy_addr), &proxied_tls).await;
            one(&mut s, target.port()).await;
            proxied_new.push(t.elapsed());
        }
        direct_new.sort();
        proxied_new.sort();
        println!(
            "new connection + first request (median of {n}): direct {:.0} us, through keyward (CONNECT + TLS, cached leaf) {:.0} us, ratio {:.2}",
            us(direct_new[n / 2]),
            us(proxied_new[n / 2]),
            proxied_new[n / 2].as_secs_f64() / direct_new[n / 2].as_secs_f64()
        );
        println!(
            "process RSS: {:.1} MB before load, peak {:.1} MB (client + proxy + upstream together)",
            rss_before as f64 / 1024.0,
            rss_kb("VmHWM:") as f64 / 1024.0
        );
    });
}
