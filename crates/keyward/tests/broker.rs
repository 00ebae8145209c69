//! `keyward run --broker fd`: the program reaches its grants' hosts through
//! descriptor 3 only (no proxy URL, no token, no CA in its environment),
//! and every stream it gets goes through the proxy's pipeline. Real daemon,
//! real HTTPS upstream, python3 clients (`socket.recv_fds`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::upstream::{SECRET, setup};
use common::{TestHome, json, wait_for};

/// The documented example client (examples/broker/client.py).
fn example_client() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/broker/client.py")
}

/// The prelude of every inline client: `broker`, `dial()`, `get(host, path)`.
const PRELUDE: &str = r#"
import os, socket, sys, json, threading, array
broker = socket.socket(fileno=int(os.environ["KEYWARD_BROKER_FD"]))
def answer():
    msg, fds, flags, addr = socket.recv_fds(broker, 2, 1)
    return msg, fds
def dial():
    broker.send(b"\x01")
    msg, fds = answer()
    if msg != b"\x01" or len(fds) != 1:
        raise ConnectionError(f"dial refused: {msg!r} {fds}")
    return socket.socket(fileno=fds[0])
def get(host, path, extra=""):
    s = dial()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode(errors="replace")
"#;

fn run_python(home: &TestHome, grants: &[&str], script: &str) -> common::Run {
    let mut args = vec!["run", "--broker", "fd"];
    for g in grants {
        args.extend(["--grant", g]);
    }
    let script = format!("{PRELUDE}\n{script}");
    args.extend(["--", "python3", "-c", &script]);
    home.run(&args)
}

fn egress_records(home: &TestHome, n: usize) -> Vec<serde_json::Value> {
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .matches("egress")
            .count()
            >= n),
        "{}",
        home.log()
    );
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "1000"]);
    tail.stdout.lines().map(json).collect()
}

#[test]
fn a_brokered_program_uses_the_secret_without_a_token_a_proxy_or_a_ca() {
    let (home, upstream) = setup("");
    let out = home
        .cmd(&[
            "run",
            "--broker",
            "fd",
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            "env; echo ARGS; cat /proc/$$/cmdline | tr '\\0' ' '; echo; echo RESPONSE; \
             exec python3 \"$0\" \"$1\" /user",
        ])
        .arg(example_client())
        .arg(format!("localhost:{}", upstream.port))
        .output()
        .unwrap();
    let out = common::Run::from(out);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    let (env, response) = out.stdout.split_once("RESPONSE\n").unwrap();
    // Nothing to steal and nothing to trust: the descriptor is the way out.
    assert!(env.contains("KEYWARD_BROKER_FD=3"), "{env}");
    // (CA variables this test's own environment has point at the system
    // bundle; none points at keyward's.)
    for absent in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "run:",
        "bundle.pem",
        SECRET,
    ] {
        assert!(
            !env.contains(absent),
            "{absent} in the program's environment: {env}"
        );
    }
    let runs = home.run(&["audit", "tail", "--kind", "run", "--json", "-n", "10"]);
    let created = json(runs.stdout.lines().next().unwrap());
    assert_eq!(created["data"]["run"]["broker"], true, "{created}");
    // The upstream got the secret; the program got its echo scrubbed.
    assert!(response.starts_with("200\n"), "{response}");
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    assert_eq!(got[0]["path"], "/user");
    assert!(!out.stdout.contains(SECRET), "{out:?}");
    // The echoed credential comes back as the placeholder the program holds.
    assert!(response.contains("Bearer kw_ph_"), "{response}");
    // Attributed to the run by construction, and said so.
    let records = egress_records(&home, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["data"]["via"], "broker");
    assert_eq!(records[0]["data"]["injected"], json(r#"["local"]"#));
    assert_eq!(records[0]["data"]["response"]["status"], 200);
    assert!(home.files_containing(SECRET).is_empty());
}

#[test]
fn concurrent_dials_get_their_own_streams_and_bad_messages_get_0xff_and_no_fd() {
    let (home, upstream) = setup("");
    let host = format!("localhost:{}", upstream.port);
    let script = format!(
        r#"
results = {{}}
def worker(i):
    results[i] = get("{host}", f"/stream/{{i}}")
threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
for i in range(16):
    body = results[i].split("\r\n\r\n", 1)[1]
    assert json.loads(body)["path"] == f"/stream/{{i}}", (i, results[i])
print("CONCURRENT OK")
# Malformed: another byte, a longer message, a descriptor attached. Each
# gets 0xFF and no descriptor; the broker keeps serving.
for bad in [b"\x02", b"\x01\x01", b"\x01" * 64, b""]:
    broker.send(bad)
    msg, fds = answer()
    print("BAD", bad[:2].hex() or "empty", msg.hex(), len(fds))
r, w = os.pipe()
socket.send_fds(broker, [b"\x01"], [r])
msg, fds = answer()
print("WITH_FD", msg.hex(), len(fds))
print("AFTER", get("{host}", "/after").split("\r\n")[0])
# A host the run's grants do not name is refused like any other request.
print("OTHER", get("example.invalid", "/x").split("\r\n\r\n")[0].replace("\r\n", " | "))
"#
    );
    let out = run_python(&home, &["local"], &script);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("CONCURRENT OK"), "{out:?}");
    for bad in ["02", "0101"] {
        assert!(out.stdout.contains(&format!("BAD {bad} ff 0")), "{out:?}");
    }
    // An empty message is malformed too, not the end of the broker.
    assert!(out.stdout.contains("BAD empty ff 0"), "{out:?}");
    assert!(out.stdout.contains("WITH_FD ff 0"), "{out:?}");
    assert!(out.stdout.contains("AFTER HTTP/1.1 200 OK"), "{out:?}");
    assert!(out.stdout.contains("OTHER HTTP/1.1 403"), "{out:?}");
    assert!(
        out.stdout
            .contains("x-keyward-blocked: broker.host_not_granted"),
        "{out:?}"
    );
    let got = upstream.received();
    assert_eq!(got.len(), 17, "{got:?}");
    assert!(
        got.iter()
            .all(|r| r["headers"]["authorization"] == format!("Bearer {SECRET}"))
    );
}

/// Descriptors the daemon has open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn ten_thousand_dials_leave_no_descriptor_behind_in_the_daemon() {
    let (home, upstream) = setup("");
    let host = format!("localhost:{}", upstream.port);
    // Warm the daemon (its pools, its caches) before counting: streams go
    // to the proxy's core workers in turn, each with its own upstream pool,
    // so enough dials that every worker (at most 64) has its connection.
    let warm = run_python(
        &home,
        &["local"],
        &format!("for _ in range(64):\n    r = get('{host}', '/warm')\nprint(r[:12])"),
    );
    assert_eq!(warm.code, 0, "{warm:?}");
    let daemon = home.pid_in_file().unwrap();
    let before = open_fds(daemon);
    // Each stream is closed by both sides before the next dial: a program
    // that closes without waiting can have more than the broker's 256
    // streams open in the daemon while its workers catch up, and is then
    // (rightly) refused a dial. The daemon's end closing shows as EOF here.
    let script = format!(
        r#"
for i in range(10000):
    s = dial()
    if i % 1000 == 0:
        s.sendall(b"GET /n HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    else:
        s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
print("DIALED")
"#
    );
    let out = run_python(&home, &["local"], &script);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("DIALED"));
    // Every stream the program closed is closed in the daemon too.
    let settled = wait_for(Duration::from_secs(20), || open_fds(daemon) <= before);
    assert!(
        settled,
        "daemon fds: {before} before, {} after",
        open_fds(daemon)
    );
}

#[test]
fn a_dial_after_the_daemon_stopped_fails_with_eof_and_nothing_hangs() {
    let (home, upstream) = setup("");
    let host = format!("localhost:{}", upstream.port);
    let go = home.path.join("go");
    let script = format!(
        r#"
import time
print("FIRST", get("{host}", "/first").split("\r\n")[0], flush=True)
while not os.path.exists("{go}"):
    time.sleep(0.05)
try:
    broker.send(b"\x01")
    msg, fds = answer()
    print("SECOND", repr(msg), len(fds), flush=True)
except BrokenPipeError:
    print("SECOND EPIPE", flush=True)
"#,
        go = go.display()
    );
    let script = format!("{PRELUDE}\n{script}");
    let mut child = home
        .cmd(&[
            "run", "--broker", "fd", "--grant", "local", "--", "python3", "-c", &script,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("FIRST HTTP/1.1 200"), "{first}");
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let _ = child.wait();
    // The broker's end is closed: a send fails (EPIPE) or the answer is EOF.
    assert!(
        rest.contains("SECOND b'' 0") || rest.contains("SECOND EPIPE"),
        "EOF expected: {rest}"
    );
}

#[test]
fn only_the_runs_own_wrapper_hands_over_a_broker_and_only_with_a_socketpair() {
    let (home, upstream) = setup("");
    let _ = upstream;
    // From inside a run: refused, like every admin call but health and
    // evaluate (the wrapper alone may hand over its broker).
    let socket = home.socket();
    let script = format!(
        r#"
import socket, json
s = socket.socket(socket.AF_UNIX)
s.connect("{socket}")
body = json.dumps({{"token": "x"}})
s.sendall(f"POST /v1/runs/run_000000000000/broker HTTP/1.1\r\nHost: k\r\nContent-Length: {{len(body)}}\r\nConnection: close\r\n\r\n{{body}}".encode())
print(s.recv(4096).decode().split("\r\n")[0])
"#,
        socket = socket.display()
    );
    let out = home.run(&["run", "--grant", "local", "--", "python3", "-c", &script]);
    assert!(out.stdout.contains("403"), "{out:?}");
    // From outside: a run's token must match, and a SOCK_SEQPACKET end must
    // come with the request.
    let create = home.http(
        "POST",
        "/v1/runs",
        Some(r#"{"grants":["local"],"broker":true}"#),
    );
    assert_eq!(create.0, 200, "{create:?}");
    let created = json(&create.1);
    let id = created["run_id"].as_str().unwrap();
    assert_eq!(created["env"], json(r#"{"KEYWARD_BROKER_FD":"3"}"#));
    let token = created["token"].as_str().unwrap();
    let path = format!("/v1/runs/{id}/broker");
    let (status, body) = home.http("POST", &path, Some(r#"{"token":"wrong"}"#));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bad_token"), "{body}");
    let (status, body) = home.http("POST", &path, Some(&format!(r#"{{"token":"{token}"}}"#)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no_broker_fd"), "{body}");
    // Broker and base URL together make no sense: refused.
    let both = home.http(
        "POST",
        "/v1/runs",
        Some(r#"{"grants":["anthropic"],"broker":true,"base_url":true}"#),
    );
    assert_eq!(both.0, 400, "{both:?}");
}

/// Set in the copy of this test binary that runs as a brokered program.
const CHILD_VAR: &str = "KEYWARD_TEST_BROKER_CHILD";

#[test]
fn a_rust_program_dials_with_the_keyward_api_helper() {
    if let Ok(host) = std::env::var(CHILD_VAR) {
        // The brokered program: keyward_api::broker over fd 3.
        use std::io::{Read, Write};
        let mut stream = keyward_api::broker::dial_from_env().expect("dial");
        write!(
            stream,
            "GET /from-rust HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        println!("RUST {}", response.lines().next().unwrap_or_default());
        return;
    }
    let (home, upstream) = setup("");
    let out = home
        .cmd(&["run", "--broker", "fd", "--grant", "local", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_rust_program_dials_with_the_keyward_api_helper",
            "--nocapture",
        ])
        .env(CHILD_VAR, format!("localhost:{}", upstream.port))
        .output()
        .unwrap();
    let out = common::Run::from(out);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("RUST HTTP/1.1 200 OK"), "{out:?}");
    let got = upstream.received();
    assert_eq!(got[0]["path"], "/from-rust");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
}

#[test]
fn the_go_example_dials_through_the_broker() {
    let (home, upstream) = setup("");
    let example = example_client().with_file_name("client.go");
    let built = home.path.parent().unwrap().join("go-client");
    let cache = home.path.parent().unwrap().join("go-cache");
    let go = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&built)
        .arg(&example)
        .env("GOCACHE", &cache)
        .env("GOPATH", home.path.parent().unwrap().join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go is needed for this test (Debian's golang-go; .ci/run installs it)");
    assert!(
        go.status.success(),
        "{}",
        String::from_utf8_lossy(&go.stderr)
    );
    let out = home
        .cmd(&["run", "--broker", "fd", "--grant", "local", "--"])
        .arg(&built)
        .args([
            format!("localhost:{}", upstream.port),
            "/from-go".to_owned(),
        ])
        .output()
        .unwrap();
    let out = common::Run::from(out);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.starts_with("200\n"), "{out:?}");
    assert!(!out.stdout.contains(SECRET), "{out:?}");
    let got = upstream.received();
    assert_eq!(got[0]["path"], "/from-go");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
}

/// What a hostile program tries on its streams: each is refused before
/// anything goes upstream, or goes upstream and is on the record as what
/// it was.
#[test]
fn hostile_streams_are_refused_or_recorded_as_what_they_are() {
    let (home, upstream) = setup("");
    let host = format!("localhost:{}", upstream.port);
    let script = format!(
        r#"
import time
def head(host, raw):
    s = dial()
    s.sendall(raw)
    data = s.recv(65536)
    s.close()
    return data.decode(errors="replace").split("\r\n")[0] + " " + " ".join(
        l for l in data.decode(errors="replace").split("\r\n") if l.startswith("x-keyward-blocked"))
# A CONNECT on a stream, and an upgrade: refused, nothing sent upstream.
print("CONNECT", head("{host}", b"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
print("UPGRADE", head("{host}", b"GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
# A Host in another spelling reaches the upstream as the grant's own.
print("CASE", get("{host}".upper(), "/case").split("\r\n")[0])
# A Connection header naming the injected header does not remove it.
print("HOP", get("{host}", "/hop", "Connection: Authorization\r\n").split("\r\n")[0])
# Gone before the answer: the request (sent upstream) is still on record.
s = dial()
s.sendall(b"GET /slow/gone HTTP/1.1\r\nHost: {host}\r\n\r\n")
time.sleep(0.5)
s.close()
# A body broken off: the child's doing, not an unreachable upstream.
s = dial()
s.sendall(b"POST /cut HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nx")
time.sleep(0.5)
s.close()
time.sleep(2.5)
print("DONE")
"#
    );
    let out = run_python(&home, &["local"], &script);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(
        out.stdout.contains(
            "CONNECT HTTP/1.1 405 Method Not Allowed x-keyward-blocked: connect_not_here"
        ),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "UPGRADE HTTP/1.1 501 Not Implemented x-keyward-blocked: broker.upgrade_unsupported"
        ),
        "{out:?}"
    );
    assert!(out.stdout.contains("CASE HTTP/1.1 200"), "{out:?}");
    assert!(out.stdout.contains("HOP HTTP/1.1 200"), "{out:?}");
    upstream.settle();
    let got = upstream.received();
    let by_path = |p: &str| got.iter().find(|r| r["path"] == p).cloned();
    assert!(
        by_path("/ws").is_none() && got.iter().all(|r| r["method"] != "CONNECT"),
        "{got:?}"
    );
    let case = by_path("/case").unwrap();
    assert_eq!(case["headers"]["host"], host, "{case}");
    let hop = by_path("/hop").unwrap();
    assert_eq!(
        hop["headers"]["authorization"],
        format!("Bearer {SECRET}"),
        "{hop}"
    );
    assert!(
        by_path("/slow/gone").is_some(),
        "the slow request reached the upstream: {got:?}"
    );
    // Every request is on record, each as what happened.
    let records = egress_records(&home, 6);
    let record = |p: &str| {
        records
            .iter()
            .find(|r| r["data"]["request"]["path"] == p)
            .unwrap_or_else(|| panic!("no record for {p}: {records:?}"))
            .clone()
    };
    let gone = record("/slow/gone");
    assert_eq!(gone["data"]["blocked"], "client_closed", "{gone}");
    assert_eq!(gone["data"]["fault"], "child", "{gone}");
    assert_eq!(gone["data"]["injected"], json(r#"["local"]"#), "{gone}");
    let cut = record("/cut");
    assert!(
        cut["data"]["blocked"] == "client_body_aborted"
            || cut["data"]["blocked"] == "client_closed",
        "{cut}"
    );
    assert_eq!(cut["data"]["fault"], "child", "{cut}");
    assert_eq!(record("/hop")["data"]["injected"], json(r#"["local"]"#));
}
