//! The admin API over the Unix socket: routes, errors, peer credentials.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{Run, TestHome, alive, json, wait_for};

#[test]
fn health_reports_identity_and_capabilities() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    let (status, body) = home.http("GET", "/v1/health", None);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["pid"], pid);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["commit"].is_string());
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["uptime_s"].is_u64());
    let caps = v["capabilities"].as_array().unwrap();
    assert!(caps.iter().any(|c| c == "shutdown"), "{v}");
    assert!(v.get("evidence_error").is_none(), "a healthy log: {v}");
}

#[test]
fn errors_have_a_code_and_a_message() {
    let home = TestHome::new();
    let pid = home.start(&[]);

    let (status, body) = home.http("GET", "/v1/nope", None);
    assert_eq!(status, 404);
    let v = json(&body);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/nope"));

    let (status, body) = home.http("GET", "/v1/shutdown", None);
    assert_eq!(status, 405);
    assert_eq!(json(&body)["error"]["code"], "method_not_allowed");

    let (status, body) = home.http("POST", "/v1/shutdown", Some("{\"reason\": "));
    assert_eq!(status, 400, "{body}");
    let v = json(&body);
    assert_eq!(v["error"]["code"], "bad_request");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("malformed JSON") && msg.contains("line 1"),
        "{msg}"
    );

    let (status, body) = home.http("POST", "/v1/shutdown", Some("{\"reason\": 5}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid type"), "{body}");

    // Bad requests changed nothing.
    assert!(alive(pid));
    assert_eq!(home.run(&["status"]).code, 0);
}

#[test]
fn shutdown_ignores_unknown_fields_and_stops_gracefully() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    let (status, body) = home.http(
        "POST",
        "/v1/shutdown",
        Some(r#"{"reason":"test over","field_from_the_future":[1,2]}"#),
    );
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["status"], "shutting_down");
    assert_eq!(v["pid"], pid);
    assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
    assert!(!home.socket().exists());
    assert!(!home.pid_file().exists());
    assert!(
        home.log()
            .contains("shutdown requested over the admin API (test over)"),
        "{}",
        home.log()
    );
}

#[test]
fn cli_reports_a_refused_connection_as_not_running() {
    let home = TestHome::new();
    let run = home.run(&["status"]);
    assert_eq!(run.code, 3);
    // Every client call, not only status, explains how to start the daemon.
    let home2 = TestHome::new();
    std::fs::create_dir_all(&home2.path).unwrap();
    let _stale = std::os::unix::net::UnixListener::bind(home2.socket()).unwrap();
    drop(_stale); // leaves a socket file nobody listens on
    let run = home2.run(&["status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("stale socket"), "{run:?}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn as_nobody(home: &TestHome, args: &[&str]) -> Run {
    let bin = home.binary_for_other_users();
    Run::from(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(args)
            .env("KEYWARD_HOME", &home.path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap(),
    )
}

#[test]
fn another_uid_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED another_uid_is_refused: needs root to run a client as nobody");
        return;
    }
    let home = TestHome::new();
    let pid = home.start(&[]);

    // First line of defence: the 0700 home keeps other users from the socket.
    let run = as_nobody(&home, &["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("ermission denied"), "{run:?}");

    // Second line: even with the socket reachable, SO_PEERCRED refuses.
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(home.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = as_nobody(&home, &["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("peer_refused"), "{run:?}");
    assert!(
        run.stderr
            .contains("only from its own user, root and the users"),
        "{run:?}"
    );
    assert!(
        wait_for(Duration::from_secs(15), || home
            .log()
            .contains("refused admin connection: uid 65534")),
        "{}",
        home.log()
    );
    // The refused client changed nothing.
    assert!(alive(pid));
    assert_eq!(home.run(&["status"]).code, 0);
}

/// A run that floods the admin socket with idle connections fills only its
/// own share: its owner's `keyward status` still answers. Connections past
/// the cap are refused with a log line, and served again once some close.
#[test]
fn an_admin_socket_flood_is_capped_and_the_owner_stays_served() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), "[admin]\nmax_connections = 8\n").unwrap();
    home.start(&[]);
    let ready = home.path.parent().unwrap().join("flooding");
    let flood = format!(
        "import socket, os, time\nsocks = []\nfor _ in range(40):\n    s = socket.socket(socket.AF_UNIX); s.connect({sock:?}); socks.append(s)\nopen({ready:?}, 'w').close()\ntime.sleep(30)\n",
        sock = home.socket().display().to_string(),
        ready = ready.display().to_string()
    );
    let mut child = home
        .cmd(&["run", "--", "python3", "-c", &flood])
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(30), || ready.exists()));
    assert_eq!(home.run(&["status"]).code, 0, "the owner is locked out");
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .contains("at their cap")),
        "{}",
        home.log()
    );
    // The owner's own pool has a cap too: eight connections the daemon
    // has admitted fill it.
    let held = hold_admitted(&home, 8);
    assert_ne!(
        home.run(&["status"]).code,
        0,
        "a ninth connection was served"
    );
    drop(held);
    assert!(wait_for(Duration::from_secs(10), || home
        .run(&["status"])
        .code
        == 0));
    let _ = child.kill();
    let _ = child.wait();
}

/// `count` admin connections the daemon has admitted and keeps open, each
/// proven so by an answer on it (HTTP keep-alive). One refused at the cap
/// (an earlier client's slot can still be on its way back) is replaced,
/// for up to 30 s.
fn hold_admitted(home: &TestHome, count: usize) -> Vec<std::os::unix::net::UnixStream> {
    use std::io::{Read, Write};
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {count} admin connections were admitted",
            held.len()
        );
        let mut stream = std::os::unix::net::UnixStream::connect(home.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = [0u8; 12];
        let admitted = stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: keyward\r\n\r\n")
            .and_then(|()| stream.read_exact(&mut answer))
            .is_ok_and(|()| answer == *b"HTTP/1.1 200");
        if admitted {
            held.push(stream);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    held
}

#[test]
fn an_admin_connection_cap_out_of_range_is_a_config_error() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), "[admin]\nmax_connections = 0\n").unwrap();
    let check = home.run(&["config", "check"]);
    assert_eq!(check.code, 64, "{check:?}");
    assert!(check.stderr.contains("admin.max_connections"), "{check:?}");
}
