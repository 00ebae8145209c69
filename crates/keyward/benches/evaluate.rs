//! `POST /v1/evaluate` over the daemon's Unix socket with 1 and 16
//! keep-alive clients, every decision durably recorded (fsync, group
//! commit) before it is answered; beside a bare HTTP/1.1 echo over the same
//! kind of socket in the same run (the physical limit of this transport).
//! Then `Evaluate` over the gRPC API (TLS on loopback, an API token on every
//! call, 1 and 16 concurrent streams on one HTTP/2 connection) beside the
//! local socket in the same rounds: what a remote runner pays for TLS,
//! HTTP/2, protobuf and the token check. Client, echo and daemon share the
//! machine's cores.
//!
//! Run: `bash bench/evaluate.sh` (or `cargo bench -p keyward --bench evaluate`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

const BODY: &str = r#"{"action_type":"execute_command","target":"cargo test --workspace","session_id":"bench","agent_id":"bench-agent"}"#;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Rounds of echo-then-evaluate load per client count.
const ROUNDS: usize = 5;

async fn connect(socket: &Path) -> Sender {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender) {
    let req = Request::post("/v1/evaluate")
        .header("host", "keyward")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.into_body().collect().await.unwrap();
}

/// Requests per second with `clients` keep-alive connections for `secs`.
async fn load(socket: &Path, clients: usize, secs: f64) -> f64 {
    let mut senders = Vec::new();
    for _ in 0..clients {
        let mut s = connect(socket).await;
        one(&mut s).await;
        senders.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    one(&mut s).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A bare HTTP/1.1 server on a Unix socket answering a DecisionResponse-sized
/// JSON body to every request.
fn echo(socket: PathBuf) {
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut answer = body.to_vec();
                    answer.extend_from_slice(&[b' '; 420]);
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Decisions per second over the gRPC API with `streams` concurrent calls
/// on one connection for `secs`.
async fn load_grpc(client: &keyward_grpc::RemoteClient, streams: usize, secs: f64) -> f64 {
    let req: keyward_api::EvaluateRequest = serde_json::from_str(BODY).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let mut client = client.clone();
            let req = req.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    client.evaluate(&req).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// `[server.grpc]` on a free loopback port with a certificate for
/// localhost; returns the CA to trust.
fn configure_grpc(dir: &Path, home: &Path) -> PathBuf {
    let identity = keyward_proxy::ServiceIdentity::new("localhost").unwrap();
    let (cert, key, ca) = (
        dir.join("grpc.pem"),
        dir.join("grpc.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert, &identity.cert_pem).unwrap();
    std::fs::write(&key, &identity.key_pem).unwrap();
    std::fs::write(&ca, &identity.ca_pem).unwrap();
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(
        home.join("keyward.toml"),
        format!(
            "[server.grpc]\nlisten = \"127.0.0.1:0\"\n[server.grpc.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        ),
    )
    .unwrap();
    ca
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::Builder::new()
        .prefix("kwb")
        .tempdir_in("/tmp")
        .unwrap();
    let home = dir.path().join("home");
    let ca = configure_grpc(dir.path(), &home);
    let bin = env!("CARGO_BIN_EXE_keyward");
    let started = Command::new(bin)
        .args(["daemon", "start", "--detach"])
        .env("KEYWARD_HOME", &home)
        .env_remove("KEYWARD_CONFIG")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    let socket = home.join("keyward.sock");
    let echo_socket = dir.path().join("echo.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        echo(echo_socket.clone());
        println!("evaluate over the Unix socket (HTTP/1.1 keep-alive; decisions fsynced to the evidence log before answering):");
        // Echo and evaluate alternate in rounds; the median round is shown
        // with every round's ratio (this machine's noise moves both sides of
        // a round together far more than their ratio).
        for clients in [1usize, 16] {
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                let bare = load(&echo_socket, clients, 1.0).await;
                let decisions = load(&socket, clients, 1.0).await;
                rounds.push((decisions / bare, bare, decisions));
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
            let (ratio, bare, decisions) = rounds[ROUNDS / 2];
            println!(
                "  {clients:>2} client(s): bare echo {bare:>8.0} req/s, keyward evaluate {decisions:>8.0} decisions/s, ratio {ratio:.2} (median of {ROUNDS} rounds: {})",
                ratios.join(" ")
            );
        }

        // The gRPC API over TLS, beside the local socket in the same rounds.
        let token = Command::new(bin)
            .args(["token", "issue", "--user", "bench", "--role", "runner"])
            .env("KEYWARD_HOME", &home)
            .env_remove("KEYWARD_CONFIG")
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
        let health: serde_json::Value = serde_json::from_slice(
            &Command::new(bin)
                .args(["status", "--json"])
                .env("KEYWARD_HOME", &home)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let port = health["grpc"]["addr"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let url = format!("https://localhost:{port}");
        let client = keyward_grpc::RemoteClient::connect(&keyward_grpc::RemoteOptions {
            url: &url,
            ca_file: Some(&ca),
            client_identity: None,
            token: &token,
        })
        .await
        .unwrap();
        println!("evaluate over the gRPC API (TLS, HTTP/2, a token check per call) vs the Unix socket:");
        for clients in [1usize, 16] {
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                let local = load(&socket, clients, 1.0).await;
                let remote = load_grpc(&client, clients, 1.0).await;
                rounds.push((remote / local, local, remote));
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
            let (ratio, local, remote) = rounds[ROUNDS / 2];
            println!(
                "  {clients:>2} stream(s): socket {local:>8.0} decisions/s, gRPC/TLS {remote:>8.0} decisions/s, ratio {ratio:.2} (median of {ROUNDS} rounds: {})",
                ratios.join(" ")
            );
        }
    });
    let _ = Command::new(bin)
        .args(["daemon", "stop"])
        .env("KEYWARD_HOME", &home)
        .stdout(Stdio::null())
        .status();
    let verify = Command::new(bin)
        .args(["audit", "verify", "--json"])
        .env("KEYWARD_HOME", &home)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    println!(
        "  evidence log afterwards: valid={} records={}",
        report["valid"], report["records"]
    );
}
