//! The three ways into keyward's pipeline against the physical bar, in one
//! run: a client speaking HTTP/1.1 keep-alive at concurrency 1 and 64 to
//! the same HTTPS origin
//!
//! - directly,
//! - through a null relay (nginx: TLS in, one header injected, TLS out over
//!   a keep-alive pool; the same crypto and parsing work with no logic:
//!   `bench/null-relay.sh`, started by `bench/proxy.sh`; see
//!   docs/ARCHITECTURE.md, "The physical bar"),
//! - through keyward's forward proxy (CONNECT + TLS interception),
//! - through a base-URL endpoint (plain HTTP in, TLS out),
//! - through fd-broker streams (plain HTTP over a Unix stream, TLS out).
//!
//! keyward runs in this process as the daemon runs it: the proxy's clients
//! served by one worker thread per core (`Proxy::serve_per_core`), broker
//! streams on a runtime of its own, with the daemon's per-request pipeline: the built-in policy, header injection, scrubbing
//! and one evidence record per request. Besides throughput and latency,
//! each line gives the CPU time the middle box spent per request: keyward's
//! threads (everything but the client's) or the relay's nginx workers, read
//! from /proc (10 ms ticks). That figure is the work itself, less disturbed
//! by whatever else the machine runs than requests/s.
//!
//! `KEYWARD_BENCH_RELAY` is bench/null-relay.sh's line, "ORIGIN_PORT
//! RELAY_PORT CA_PEM ORIGIN_PID RELAY_PID" (the relay's master pid gives
//! its workers' CPU time); without it the relay line is skipped and an
//! in-process origin is used. `KEYWARD_BENCH_PROFILE=WAY[:N]` (WAY one of
//! forward, base_url, broker, relay) runs only that way at concurrency 64,
//! N requests per connection (default 400), to profile it (`perf record
//! -g`, or `valgrind --tool=callgrind --separate-threads=yes` for
//! instructions per request and thread). `KEYWARD_BENCH_RUNTIME=shared`
//! serves keyward's listener on one work-stealing runtime instead of one
//! worker per core, for comparison.
//!
//! Run: `bash bench/proxy.sh`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use keyward_api::Network;
use keyward_evidence::{DEFAULT_SEGMENT_BYTES, EvidenceLog, LogOptions};
use keyward_proxy::{CertificateAuthority, EvidenceSink, Proxy, RunContext};
use keyward_testkit::{FixedAuthority, Origin, Reply, bearer_credential};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token";
const ROUNDS: usize = 5;

/// How a client reaches the origin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Direct,
    Relay,
    ForwardProxy,
    BaseUrl,
    Broker,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Relay => "null relay (nginx)",
            Way::ForwardProxy => "keyward forward proxy",
            Way::BaseUrl => "keyward base URL",
            Way::Broker => "keyward fd broker",
        }
    }
}

struct Setup {
    origin: u16,
    relay: Option<u16>,
    /// The relay's nginx master; its workers are its children.
    relay_master: Option<u32>,
    origin_tls: tokio_rustls::TlsConnector,
    proxied_tls: tokio_rustls::TlsConnector,
    proxy: Arc<Proxy>,
    proxy_port: u16,
}

fn client_tls(ca_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn handshake<T>(io: T) -> SendRequest<Empty<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn tcp(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

async fn tls(
    connector: &tokio_rustls::TlsConnector,
    io: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    connector
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .unwrap()
}

/// One keep-alive connection by `way`, and the path and host its requests use.
async fn connect(s: &Setup, way: Way) -> (SendRequest<Empty<Bytes>>, String, String) {
    let origin = format!("localhost:{}", s.origin);
    match way {
        Way::Direct => (
            handshake(tls(&s.origin_tls, tcp(s.origin).await).await).await,
            "/bench".into(),
            origin,
        ),
        Way::Relay => {
            let relay = s.relay.unwrap();
            (
                handshake(tls(&s.origin_tls, tcp(relay).await).await).await,
                "/bench".into(),
                format!("localhost:{relay}"),
            )
        }
        Way::ForwardProxy => {
            let mut io = tcp(s.proxy_port).await;
            let req = format!(
                "CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n"
            );
            io.write_all(req.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                io.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"));
            (
                handshake(tls(&s.proxied_tls, io).await).await,
                "/bench".into(),
                origin,
            )
        }
        Way::BaseUrl => (
            handshake(tcp(s.proxy_port).await).await,
            format!("/r/{TOKEN}/bench/bench"),
            format!("127.0.0.1:{}", s.proxy_port),
        ),
        Way::Broker => {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            // As the daemon hands a dialled stream over: to a core worker.
            assert!(s.proxy.admit_broker_stream(ours, TOKEN.to_owned(), ()));
            (handshake(theirs).await, "/bench".into(), origin)
        }
    }
}

async fn one(sender: &mut SendRequest<Empty<Bytes>>, path: &str, host: &str) -> Duration {
    let t = Instant::now();
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.into_body().collect().await.unwrap();
    t.elapsed()
}

struct Figures {
    rps: f64,
    p50: Duration,
    /// CPU time the middle box spent per request (none for direct).
    cpu_per_request: Option<Duration>,
}

/// Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on
/// Linux everywhere).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime, in ticks, from a /proc/.../stat line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of this process's threads that are not the client's: keyward
/// (its runtime, the evidence writer, the CA's threads).
fn keyward_ticks() -> u64 {
    let me = std::process::id().to_string();
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == CLIENT_THREAD || task.file_name() == me.as_str() {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        total += stat_ticks(&stat).unwrap_or(0);
    }
    total
}

/// CPU ticks of the children of `master` (nginx's workers).
fn children_ticks(master: u32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(master) {
            total += stat_ticks(&stat).unwrap_or(0);
        }
    }
    total
}

/// The CPU ticks so far of the middle box `way` goes through.
fn middle_ticks(s: &Setup, way: Way) -> Option<u64> {
    match way {
        Way::Direct => None,
        Way::Relay => s.relay_master.map(children_ticks),
        Way::ForwardProxy | Way::BaseUrl | Way::Broker => Some(keyward_ticks()),
    }
}

const CLIENT_THREAD: &str = "bench-client";

async fn load(s: &Setup, way: Way, concurrency: usize, per_conn: usize) -> Figures {
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        let (mut sender, path, host) = connect(s, way).await;
        one(&mut sender, &path, &host).await; // warm
        conns.push((sender, path, host));
    }
    let start = Instant::now();
    let ticks_before = middle_ticks(s, way);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(mut sender, path, host)| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_conn);
                for _ in 0..per_conn {
                    lat.push(one(&mut sender, &path, &host).await);
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
    let cpu_per_request = ticks_before
        .zip(middle_ticks(s, way))
        .map(|(before, after)| {
            Duration::from_secs_f64((after - before) as f64 / TICKS_PER_SECOND / all.len() as f64)
        });
    all.sort();
    Figures {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        cpu_per_request,
    }
}

/// An in-process HTTPS origin answering "ok\n", for runs without nginx.
async fn own_origin(dir: &std::path::Path) -> (u16, PathBuf) {
    let origin = Origin::start(&[b"http/1.1"], Reply::Fixed(Bytes::from_static(b"ok\n"))).await;
    let ca = dir.join("origin-ca.pem");
    std::fs::write(&ca, &origin.ca_pem).unwrap();
    let port = origin.addr.port();
    // The origin serves for the bench's whole run.
    std::mem::forget(origin);
    (port, ca)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let keyward_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("keyward")
        .enable_all()
        .build()
        .unwrap();
    let keyward = keyward_runtime.handle().clone();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let relay_env = std::env::var("KEYWARD_BENCH_RELAY").ok();
        let (origin, relay, origin_ca, relay_master) = match relay_env.as_deref().map(|v| v.split_whitespace().collect::<Vec<_>>()) {
            Some(parts) if parts.len() >= 3 => (parts[0].parse().unwrap(), Some(parts[1].parse().unwrap()), PathBuf::from(parts[2]), parts.get(4).map(|p| p.parse().unwrap())),
            _ => {
                let (port, ca) = own_origin(dir.path()).await;
                (port, None, ca, None)
            }
        };
        let (evidence, _) = EvidenceLog::open(LogOptions {
            dir: dir.path().join("audit"),
            signer: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        })
        .unwrap();
        let credential =
            bearer_credential("bench", &[&format!("localhost:{origin}")], "bench-secret-value");
        let ctx = RunContext::new("run_bench".into(), Network::Permissive, vec![], vec![credential])
            .with_policy(Arc::new(keyward_policy::baseline()));
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
        let proxy = Arc::new(
            Proxy::new(ca, Arc::new(FixedAuthority::new(TOKEN, ctx)), std::slice::from_ref(&origin_ca))
                .unwrap()
                .with_sink(Arc::new(EvidenceSink(Arc::new(evidence)))),
        );
        // As the daemon serves: one worker thread per core; or, with
        // KEYWARD_BENCH_RUNTIME=shared, on one work-stealing runtime (how
        // the daemon served before 2026-12-03), for comparison.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = listener.local_addr().unwrap().port();
        if std::env::var("KEYWARD_BENCH_RUNTIME").as_deref() == Ok("shared") {
            listener.set_nonblocking(true).unwrap();
            let served = proxy.clone();
            keyward.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                served.serve(listener, std::future::pending()).await
            });
        } else {
            keyward.spawn(
                proxy
                    .clone()
                    .serve_per_core(listener, std::future::pending())
                    .unwrap(),
            );
        }
        let setup = Setup {
            origin,
            relay,
            relay_master,
            origin_tls: client_tls(&origin_ca),
            proxied_tls: client_tls(&dir.path().join("ca/public/ca.pem")),
            proxy,
            proxy_port,
        };
        println!("ways into keyward vs the null relay: HTTPS origin {}, HTTP/1.1 keep-alive clients (2 cores shared by client, relay/keyward and origin)",
            if relay.is_some() { "nginx" } else { "in-process (no relay: set KEYWARD_BENCH_RELAY, see bench/proxy.sh)" });
        if let Ok(profile) = std::env::var("KEYWARD_BENCH_PROFILE") {
            let (way, per_conn) = profile.split_once(':').unwrap_or((&profile, "400"));
            let per_conn = per_conn.parse().expect("KEYWARD_BENCH_PROFILE=WAY:N, N a count");
            let way = match way {
                "forward" => Way::ForwardProxy,
                "base_url" => Way::BaseUrl,
                "broker" => Way::Broker,
                "relay" if relay.is_some() => Way::Relay,
                other => panic!("KEYWARD_BENCH_PROFILE={other:?}: expected forward, base_url, broker or (with a relay) relay"),
            };
            let f = load(&setup, way, 64, per_conn).await;
            println!(
                "{}: {:.0} req/s at concurrency 64, cpu {:.1} us/req",
                way.name(),
                f.rps,
                f.cpu_per_request.map_or(0.0, us)
            );
            return;
        }
        let mut ways = vec![Way::Direct];
        if relay.is_some() {
            ways.push(Way::Relay);
        }
        ways.extend([Way::ForwardProxy, Way::BaseUrl, Way::Broker]);
        for (concurrency, per_conn) in [(1usize, 2000usize), (64, 80)] {
            // Each round measures every way once; the median round (by
            // the forward proxy's throughput) is shown, with the range.
            let mut rounds: Vec<Vec<Figures>> = Vec::new();
            for _ in 0..ROUNDS {
                let mut round = Vec::new();
                for way in &ways {
                    round.push(load(&setup, *way, concurrency, per_conn).await);
                }
                rounds.push(round);
            }
            let fwd = ways.iter().position(|w| *w == Way::ForwardProxy).unwrap();
            rounds.sort_by(|a, b| a[fwd].rps.total_cmp(&b[fwd].rps));
            let median = &rounds[ROUNDS / 2];
            println!("concurrency {concurrency} (median of {ROUNDS} rounds):");
            let bar = relay.map(|_| &median[1]);
            let direct = &median[0];
            for (way, f) in ways.iter().zip(median) {
                let vs_bar = bar.map_or(String::new(), |b| format!("  {:.2}x relay req/s, p50 {:+.1} us vs relay", f.rps / b.rps, us(f.p50) - us(b.p50)));
                let cpu = f.cpu_per_request.map_or(String::new(), |c| format!("  cpu {:>5.1} us/req", us(c)));
                println!(
                    "  {:<22} {:>8.0} req/s  p50 {:>7.1} us  (+{:.1} us over direct){cpu}{vs_bar}",
                    way.name(), f.rps, us(f.p50), us(f.p50) - us(direct.p50)
                );
            }
        }
    });
}
