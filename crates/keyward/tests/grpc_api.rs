//! The gRPC API for remote callers (team mode), as a runner on another
//! machine uses it: `[server.grpc]` over real TLS (and mutual TLS) with a
//! test CA, calls authenticated by API tokens and allowed by their roles,
//! the standard health service, `keyward --remote ... eval` and its exit
//! statuses, every error class, and each decision on record with its
//! caller. No test leaves loopback.

mod common;

use std::path::{Path, PathBuf};

use common::{TestHome, json};
use keyward_api::{Decision, EvaluateRequest};
use keyward_grpc::{RemoteClient, RemoteError, RemoteOptions};

/// A server certificate for localhost and, optionally, a client identity
/// from another CA (mutual TLS), written next to the home.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(home: &TestHome) -> Self {
        let dir = home.path.parent().unwrap().join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |prefix: &str, id: &keyward_proxy::ServiceIdentity| {
            std::fs::write(dir.join(format!("{prefix}-ca.pem")), &id.ca_pem).unwrap();
            std::fs::write(dir.join(format!("{prefix}.pem")), &id.cert_pem).unwrap();
            std::fs::write(dir.join(format!("{prefix}.key")), &id.key_pem).unwrap();
        };
        write(
            "server",
            &keyward_proxy::ServiceIdentity::new("localhost").unwrap(),
        );
        write(
            "client",
            &keyward_proxy::ServiceIdentity::new("runner-7").unwrap(),
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// Starts the daemon with a gRPC listener on a free port; returns its URL.
fn start_with_grpc(home: &TestHome, pki: &Pki, mutual: bool) -> String {
    start_with_grpc_extra(home, pki, mutual, "")
}

fn start_with_grpc_extra(home: &TestHome, pki: &Pki, mutual: bool, extra: &str) -> String {
    let client_ca = if mutual {
        format!("client_ca_file = {:?}\n", pki.path_str("client-ca.pem"))
    } else {
        String::new()
    };
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[server.grpc]\nlisten = \"127.0.0.1:0\"\n{extra}\n[server.grpc.tls]\ncert_file = {:?}\n\
             key_file = {:?}\n{client_ca}",
            pki.path_str("server.pem"),
            pki.path_str("server.key")
        ),
    )
    .unwrap();
    home.start(&[]);
    let (_, health) = home.http("GET", "/v1/health", None);
    let grpc = &json(&health)["grpc"];
    assert_eq!(
        grpc["tls"],
        if mutual { "mutual_tls" } else { "tls" },
        "{health}"
    );
    let port = grpc["addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    format!("https://localhost:{port}")
}

fn issue(home: &TestHome, user: &str, role: &str) -> String {
    let out = home.run(&["token", "issue", "--user", user, "--role", role]);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_owned()
}

async fn connect(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    token: &str,
) -> Result<RemoteClient, RemoteError> {
    RemoteClient::connect(&RemoteOptions {
        url,
        ca_file: Some(ca),
        client_identity: identity,
        token,
    })
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn read_file(action: &str, target: &str) -> EvaluateRequest {
    EvaluateRequest {
        action_type: action.to_owned(),
        target: Some(target.to_owned()),
        ..Default::default()
    }
}

/// The gRPC status and the admin API's code a call was refused with.
fn refused<T: std::fmt::Debug>(result: Result<T, RemoteError>) -> (tonic::Code, String, String) {
    match result {
        Err(RemoteError::Status { status, api_code }) => (
            status.code(),
            api_code.unwrap_or_default(),
            status.message().to_owned(),
        ),
        other => panic!("expected a refused call, got {other:?}"),
    }
}

#[test]
fn remote_callers_are_decided_by_their_token_over_tls() {
    let home = TestHome::new();
    let pki = Pki::new(&home);
    let url = start_with_grpc(&home, &pki, false);
    let runner = issue(&home, "ci", "runner");
    assert_eq!(
        home.run(&[
            "role",
            "create",
            "reader",
            "--scope",
            "runs.read",
            "--rate-limit",
            "2/1h"
        ])
        .code,
        0
    );
    let reader = issue(&home, "dash", "reader");
    let ca = pki.path("server-ca.pem");

    runtime().block_on(async {
        let mut client = connect(&url, &ca, None, &runner).await.unwrap();
        let health = client.health().await.unwrap();
        assert_eq!(health.status, "ok");
        let decision = client
            .evaluate(&read_file("execute_command", "rm -rf /"))
            .await
            .unwrap();
        assert_eq!(decision.decision, Decision::Block, "{decision:?}");
        assert!(!decision.evidence_refs.is_empty());
        assert!(client.list_runs().await.unwrap().is_empty());

        // A request without what it must have: the field is named.
        let (code, api, message) = refused(client.evaluate(&read_file("", "x")).await);
        assert_eq!(
            (code, api.as_str()),
            (tonic::Code::InvalidArgument, "bad_request")
        );
        assert!(message.contains("action_type"), "{message}");

        // A run the runner's token creates is listed to that user only.
        let (status, _, body) = common::http_exchange(
            &home.socket(),
            "POST",
            "/v1/runs",
            &[&format!("authorization: Bearer {runner}")],
            Some(r#"{"grants":[]}"#),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(client.list_runs().await.unwrap().len(), 1);

        // A role without the scope, then its rate limit with a retry-after.
        let mut reading = connect(&url, &ca, None, &reader).await.unwrap();
        let (code, api, message) = refused(reading.evaluate(&read_file("read_file", "/x")).await);
        assert_eq!(
            (code, api.as_str()),
            (tonic::Code::PermissionDenied, "scope_denied")
        );
        assert!(message.contains("scope evaluate"), "{message}");
        assert!(
            reading.list_runs().await.unwrap().is_empty(),
            "another user's run"
        );
        reading.list_runs().await.unwrap();
        match reading.list_runs().await {
            Err(RemoteError::Status { status, api_code }) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert_eq!(api_code.as_deref(), Some("rate_limited"));
                let retry: u64 = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a retry-after");
                assert!((3000..=3600).contains(&retry), "{retry}");
            }
            other => panic!("{other:?}"),
        }

        // Unknown and missing tokens.
        let mut stranger = connect(&url, &ca, None, "kwt_00000000000000000000000000000000")
            .await
            .unwrap();
        let (code, api, _) = refused(stranger.health().await);
        assert_eq!(
            (code, api.as_str()),
            (tonic::Code::Unauthenticated, "token_invalid")
        );

        // A remote caller cannot pick the laxer built-in pack.
        let mut laxer = read_file("read_file", "/srv/export.csv");
        laxer.policy_pack = Some("agent-baseline-x".into());
        let (code, api, _) = refused(client.evaluate(&laxer).await);
        assert_eq!(
            (code, api.as_str()),
            (tonic::Code::PermissionDenied, "policy_pack_refused")
        );

        // A message past the limit is refused; without a valid token it is
        // refused as such before it is read.
        let huge = read_file("read_file", &"x".repeat(300 << 10));
        let (code, _, _) = refused(client.evaluate(&huge).await);
        assert!(
            matches!(
                code,
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{code:?}"
        );
        let (code, api, _) = refused(stranger.evaluate(&huge).await);
        assert_eq!(
            (code, api.as_str()),
            (tonic::Code::Unauthenticated, "token_invalid")
        );

        // The standard health service answers load balancers (with a token
        // or not: it says nothing but "serving").
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "keyward.v1.Keyward".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // A client that does not trust the server's CA gets nowhere.
        let wrong_ca = pki.path("client-ca.pem");
        assert!(matches!(
            connect(&url, &wrong_ca, None, &runner).await,
            Err(RemoteError::Connect { .. })
        ));
    });

    // Each decision is on record with its remote caller; no token value
    // anywhere in the home.
    let tail = home.run(&["audit", "tail", "-n", "50", "--json"]);
    assert!(
        tail.stdout
            .lines()
            .any(|l| l.contains(r#""kind":"decision""#)
                && l.contains(r#""user":"ci""#)
                && l.contains(r#""via":"grpc""#)),
        "{tail:?}"
    );
    for token in [&runner, &reader] {
        assert!(home.files_containing(&token[4..]).is_empty());
    }
}

#[test]
fn keyward_remote_eval_exits_by_the_decision_and_says_why_it_cannot() {
    let home = TestHome::new();
    let pki = Pki::new(&home);
    let url = start_with_grpc(&home, &pki, false);
    let token_file = home.path.parent().unwrap().join("ci.token");
    std::fs::write(&token_file, issue(&home, "ci", "runner")).unwrap();
    let remote = |target: &str, token: &Path| {
        home.run(&[
            "--remote",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--remote-ca",
            &pki.path_str("server-ca.pem"),
            "eval",
            "--action",
            "execute_command",
            "--target",
            target,
        ])
    };
    let allowed = remote("cargo test", &token_file);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    let blocked = remote("rm -rf /", &token_file);
    assert_eq!(blocked.code, 2, "{blocked:?}");
    // A revoked token: an error (1), never a decision, with the reason.
    assert_eq!(home.run(&["token", "revoke", "ci"]).code, 0);
    let revoked = remote("cargo test", &token_file);
    assert_eq!(revoked.code, 1, "{revoked:?}");
    assert!(revoked.stderr.contains("token_invalid"), "{revoked:?}");
    // A file that holds no token is said before anything is sent.
    let junk = home.path.parent().unwrap().join("junk.token");
    std::fs::write(&junk, "hunter2").unwrap();
    let junk_run = remote("cargo test", &junk);
    assert_eq!(junk_run.code, 1, "{junk_run:?}");
    assert!(
        junk_run
            .stderr
            .contains("does not hold a keyward API token"),
        "{junk_run:?}"
    );
    assert!(!junk_run.stderr.contains("hunter2"), "{junk_run:?}");
    // Only https: a token is never sent in clear.
    let clear = home.run(&[
        "--remote",
        &url.replace("https://", "http://"),
        "--token-file",
        token_file.to_str().unwrap(),
        "eval",
        "--action",
        "read_file",
        "--target",
        "/x",
    ]);
    assert_eq!(clear.code, 1, "{clear:?}");
    assert!(
        clear.stderr.contains("would cross the network in clear"),
        "{clear:?}"
    );
    // A client identity is CERT,KEY.
    let odd = home.run(&[
        "--remote",
        &url,
        "--remote-identity",
        "only-one.pem",
        "eval",
        "--action",
        "x",
    ]);
    assert_eq!(odd.code, 1, "{odd:?}");
    assert!(odd.stderr.contains("is not CERT,KEY"), "{odd:?}");
    // Other commands do not take --remote yet: a usage error.
    let status = home.run(&["--remote", &url, "status"]);
    assert_eq!(status.code, 2, "{status:?}");
}

#[test]
fn mutual_tls_requires_a_client_certificate_and_records_its_subject() {
    let home = TestHome::new();
    let pki = Pki::new(&home);
    let url = start_with_grpc(&home, &pki, true);
    let token = issue(&home, "ci", "runner");
    let ca = pki.path("server-ca.pem");
    runtime().block_on(async {
        // Without a certificate the handshake or the first call fails.
        let bare = match connect(&url, &ca, None, &token).await {
            Ok(mut client) => client.health().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(
            bare.is_err(),
            "a call without a client certificate succeeded"
        );
        let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
        let mut client = connect(&url, &ca, Some((&cert, &key)), &token)
            .await
            .unwrap();
        let decision = client
            .evaluate(&read_file("read_file", "/etc/hostname"))
            .await
            .unwrap();
        assert_eq!(decision.decision, Decision::Allow, "{decision:?}");
    });
    // The CLI, with its client identity as CERT,KEY.
    let token_file = home.path.parent().unwrap().join("ci.token");
    std::fs::write(&token_file, &token).unwrap();
    let identity = format!(
        "{},{}",
        pki.path_str("client.pem"),
        pki.path_str("client.key")
    );
    let cli = home.run(&[
        "--remote",
        &url,
        "--token-file",
        token_file.to_str().unwrap(),
        "--remote-ca",
        &pki.path_str("server-ca.pem"),
        "--remote-identity",
        &identity,
        "eval",
        "--action",
        "read_file",
        "--target",
        "/etc/hostname",
    ]);
    assert_eq!(cli.code, 0, "{cli:?}");
    let tail = home.run(&["audit", "tail", "-n", "20", "--json"]);
    assert!(
        tail.stdout.contains("(sha256 "),
        "the certificate's fingerprint is recorded: {tail:?}"
    );
    assert!(
        tail.stdout
            .lines()
            .any(|l| l.contains(r#""kind":"decision""#)
                && l.contains(r#""client_certificate":"CN="#)),
        "{tail:?}"
    );
}

#[test]
fn a_listener_without_tls_files_is_refused_at_config_check() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        "[server.grpc]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let check = home.run(&["config", "check"]);
    assert_eq!(check.code, 64, "{check:?}");
    assert!(
        check.stderr.contains("server.grpc.tls.cert_file")
            && check.stderr.contains("disable = true"),
        "{check:?}"
    );
}

#[test]
fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
    use std::io::Read as _;
    let home = TestHome::new();
    let pki = Pki::new(&home);
    let url = start_with_grpc_extra(&home, &pki, false, "max_connections = 2\n");
    let token = issue(&home, "ci", "runner");
    let addr = url
        .trim_start_matches("https://")
        .replace("localhost", "127.0.0.1");
    // Two peers that never start their handshake hold both slots...
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // ...so a third is closed at once (EOF or reset, not a hang).
    let mut third = std::net::TcpStream::connect(&addr).unwrap();
    third
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("a connection beyond the cap was kept: {other:?}"),
    }
    // Closing them gives the slots back: a real caller gets through.
    drop(idle);
    let ca = pki.path("server-ca.pem");
    let served = runtime().block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(mut client) = connect(&url, &ca, None, &token).await
                && client.health().await.is_ok()
            {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(served, "the slots did not come back");
}

#[test]
fn bad_tls_files_stop_the_start_saying_why_and_a_stop_is_not_held_by_open_streams() {
    let home = TestHome::new();
    let pki = Pki::new(&home);
    // A key that is not the certificate's.
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[server.grpc]\nlisten = \"127.0.0.1:0\"\n[server.grpc.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            pki.path_str("server.pem"),
            pki.path_str("client.key")
        ),
    )
    .unwrap();
    let start = home.run(&["daemon", "start"]);
    assert_ne!(start.code, 0, "{start:?}");
    assert!(start.stderr.contains("server.grpc.tls"), "{start:?}");
    assert_eq!(home.run(&["status"]).code, 3, "nothing is half-served");

    // A load balancer's health watch open at the stop does not hold it.
    let url = start_with_grpc(&home, &pki, false);
    let ca = pki.path("server-ca.pem");
    let rt = runtime();
    let _watch = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(!home.socket().exists());
}
