//! CAVRA compatibility against the real daemon: the CAVRA socket spoken to
//! by `nc -U`, `python3` and raw sockets (decisions, malformed, truncated
//! and oversized requests, peers the admin check refuses, a process inside
//! a run), a CAVRA compiled policy loaded straight from `policy.files`, the
//! warnings of `keyward policy import`, and the evidence key taken from the
//! environment.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestHome, json, wait_for};

/// A directory for sockets outside the home (which is 0700): short path,
/// reachable by other users when a test opens it up.
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kwc")
        .tempdir_in("/tmp")
        .unwrap()
}

fn write_config(home: &TestHome, text: &str) {
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(home.file("keyward.toml"), text).unwrap();
}

/// A daemon whose config adds `extra` to a CAVRA socket at `socket`.
fn daemon_with_cavra(socket: &Path, extra: &str) -> TestHome {
    let home = TestHome::new();
    write_config(
        &home,
        &format!(
            "{extra}\n[compat.cavra]\nsocket = {:?}\n",
            socket.display().to_string()
        ),
    );
    home.start(&[]);
    home
}

/// `printf '%s\n' REQUEST | nc -U SOCKET`: the answer line.
fn nc(socket: &Path, request: &str) -> String {
    let mut child = Command::new("nc")
        .arg("-U")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nc (netcat-openbsd) is installed; .ci/run installs it");
    common::feed_stdin(&mut child, format!("{request}\n").as_bytes());
    // nc keeps its stdin closed and waits for the daemon to close.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nc failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The CAVRA Go client's exchange in Python: connect, send the JSON read
/// from stdin (no newline added), read until the daemon closes. Prints the
/// answer, or `ERROR <exception>` when the socket fails (a reset).
const PY_CLIENT: &str = r#"
import socket, sys
request = sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    sys.stdout.write(data.decode())
except Exception as e:
    print("ERROR", type(e).__name__, e)
"#;

fn python(socket: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PY_CLIENT]).arg(socket);
    cmd
}

/// Runs a client command with `request` on its stdin: its output.
fn answer_of(mut cmd: Command, request: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::feed_stdin(&mut child, request.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Sends `bytes` on a raw connection, optionally ends the write side, and
/// reads the answer until the daemon closes (a reset fails the test).
fn raw(socket: &Path, bytes: &[u8], shut_write: bool) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if shut_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the answer and an orderly end, not a reset");
    answer
}

/// One answer line, parsed.
fn line(answer: &str) -> serde_json::Value {
    assert!(
        answer.ends_with('\n') && answer.matches('\n').count() == 1,
        "one line: {answer:?}"
    );
    json(answer)
}

fn error_code(answer: &str) -> String {
    line(answer)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error answer: {answer}"))
        .to_owned()
}

/// The decision records in the home's evidence log.
fn decision_records(home: &TestHome) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(home.file("audit")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("evidence-") && name.ends_with(".jsonl")) {
            continue;
        }
        for l in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let v = json(l);
            if v["kind"] == "decision" {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn the_cavra_socket_decides_like_post_v1_evaluate_and_records_it() {
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let home = daemon_with_cavra(&socket, "");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is private like the admin socket");

    // The line from CAVRA's docs, piped into netcat.
    let answer = nc(
        &socket,
        r#"{"action_type":"read_file","target":"config/prod.secret"}"#,
    );
    let v = line(&answer);
    assert_eq!(v["decision"], "block", "{v}");
    assert_eq!(v["rule_id"], "filesystem.read.block");
    assert_eq!(v["policy_id"], "agent-baseline");
    assert_eq!(v["policy_pack"], "agent-baseline");
    assert_eq!(v["target"], "config/prod.secret");
    assert!(v["decision_id"].as_str().unwrap().starts_with("dec_"));
    let evidence = v["evidence_refs"][0].as_str().unwrap().to_owned();
    assert!(evidence.starts_with("keyward-evidence://"), "{v}");

    let allow = line(&nc(
        &socket,
        r#"{"action_type":"read_file","target":"src/main.rs","session_id":"s-7"}"#,
    ));
    assert_eq!(
        (&allow["decision"], &allow["rule_id"], &allow["session_id"]),
        (
            &"allow".into(),
            &"filesystem.read.allow".into(),
            &"s-7".into()
        )
    );
    // CAVRA's Go client: no newline, JSON straight after connecting.
    let push = line(&answer_of(
        python(&socket),
        r#"{"action_type":"git_operation","target":"origin/main","requested_operation":"push"}"#,
    ));
    assert_eq!(
        (&push["decision"], &push["rule_id"]),
        (
            &"block".into(),
            &"git.protected_branch.block_direct_push".into()
        )
    );
    let command = line(&answer_of(
        python(&socket),
        r#"{"action_type":"execute_command","target":"cargo test && terraform apply"}"#,
    ));
    assert_eq!(command["rule_id"], "commands.terraform.block");
    assert_eq!(command["matched_command"], "terraform apply");

    // Each decision is in the evidence log, as the admin API records it.
    let records = decision_records(&home);
    let targets: Vec<&str> = records
        .iter()
        .filter_map(|r| r["data"]["request"]["target"].as_str())
        .collect();
    assert_eq!(
        targets,
        [
            "config/prod.secret",
            "src/main.rs",
            "origin/main",
            "cargo test && terraform apply"
        ]
    );
    let seq = evidence.rsplit('/').next().unwrap();
    assert_eq!(records[0]["seq"].to_string(), seq);
    assert_eq!(records[0]["data"]["response"]["decision"], "block");

    // The same engine: the admin API answers the same request the same way.
    let (status, body) = home.http(
        "POST",
        "/v1/evaluate",
        Some(r#"{"action_type":"read_file","target":"config/prod.secret"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rule_id"], "filesystem.read.block");

    // Stopping removes the socket.
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(!socket.exists(), "the CAVRA socket is removed on stop");
    let verify = home.run(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn bad_requests_get_a_clear_error_and_lose_nothing() {
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let home = daemon_with_cavra(&socket, "");
    let before = decision_records(&home).len();

    // Malformed JSON, piped like the documented one-liner.
    let answer = nc(&socket, r#"{"action_type":"read_file","target": }"#);
    assert_eq!(error_code(&answer), "bad_request");
    assert!(
        answer.contains("malformed JSON") && answer.contains("column"),
        "{answer}"
    );
    // Braces that never close, then a newline: found malformed at once.
    let answer = nc(&socket, r#"{"action_type" "read_file""#);
    assert_eq!(error_code(&answer), "bad_request");
    assert!(answer.contains("malformed JSON"), "{answer}");
    // Not an object at all.
    let answer = nc(&socket, "hello");
    assert!(answer.contains("expected a JSON object"), "{answer}");
    assert_eq!(error_code(&answer), "bad_request");
    // No action type, as on the admin API.
    let answer = nc(&socket, r#"{"target":"x"}"#);
    assert!(answer.contains("missing field `action_type`"), "{answer}");
    let answer = nc(&socket, r#"{"action_type":" "}"#);
    assert!(answer.contains("action_type is required"), "{answer}");
    // An unknown policy pack, as on the admin API.
    let answer = nc(
        &socket,
        r#"{"action_type":"read_file","target":"a.txt","policy_pack":"nope"}"#,
    );
    assert_eq!(error_code(&answer), "unknown_policy_pack");
    // Fails closed, as on the admin API: a field keyward does not know
    // (with what it probably meant), a path action without its target.
    let answer = nc(
        &socket,
        r#"{"action_type":"read_file","path":"/root/.ssh/id_rsa"}"#,
    );
    assert_eq!(error_code(&answer), "unknown_field", "{answer}");
    assert!(answer.contains(r#"did you mean \"target\""#), "{answer}");
    let answer = nc(&socket, r#"{"action_type":"write_file"}"#);
    assert_eq!(error_code(&answer), "missing_target", "{answer}");
    // CAVRA's release evidence is accepted (and not evaluated).
    let answer = nc(
        &socket,
        r#"{"action_type":"read_file","target":"src/main.rs","release_governance":{"approval_state":"approved"}}"#,
    );
    assert_eq!(line(&answer)["decision"], "allow", "{answer}");
    // Truncated: the client ends before the braces close.
    let answer = raw(&socket, br#"{"action_type":"read_"#, true);
    assert_eq!(error_code(&answer), "bad_request");
    assert!(answer.contains("ended before"), "{answer}");
    // Nothing at all.
    let answer = raw(&socket, b"", true);
    assert!(answer.contains("no request"), "{answer}");
    // Oversized: 200 KiB of an unterminated target. The answer arrives
    // whole and the connection ends cleanly (no reset), though the daemon
    // stopped reading at its limit.
    let mut big = br#"{"action_type":"read_file","target":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 200 * 1024));
    let answer = raw(&socket, &big, false);
    assert_eq!(error_code(&answer), "payload_too_large", "{answer}");
    assert!(answer.contains("65536 bytes"), "{answer}");
    // The same through the Python client, which sends it all first.
    let answer = answer_of(python(&socket), &String::from_utf8(big).unwrap());
    assert!(!answer.starts_with("ERROR"), "{answer}");
    assert_eq!(error_code(&answer), "payload_too_large");
    // A request followed by more bytes: only the first object counts.
    let answer = raw(
        &socket,
        br#"{"action_type":"read_file","target":"a.txt"}{"action_type":"x"} trailing"#,
        false,
    );
    assert_eq!(line(&answer)["target"], "a.txt");

    // None of that was recorded as a decision, the two good requests
    // were, and the daemon serves on.
    assert_eq!(decision_records(&home).len(), before + 2);
    let v = line(&nc(
        &socket,
        r#"{"action_type":"read_file","target":".env"}"#,
    ));
    assert_eq!(v["decision"], "block");
    let (status, _) = home.http("GET", "/v1/health", None);
    assert_eq!(status, 200);
    assert!(
        home.log()
            .contains("CAVRA request not decided (payload_too_large)")
    );
}

#[test]
fn a_process_inside_a_run_gets_its_runs_policy_on_the_cavra_socket() {
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let home = daemon_with_cavra(&socket, "");
    let run_policy = dir.path().join("run-policy.toml");
    std::fs::write(
        &run_policy,
        "[policy]\nid = \"run-only\"\ndefault = \"block\"\ndefault_rule_id = \"run.default\"\n",
    )
    .unwrap();
    let mut cmd = home.cmd(&[
        "run",
        "--policy",
        run_policy.to_str().unwrap(),
        "--",
        "python3",
        "-c",
    ]);
    cmd.arg(PY_CLIENT).arg(&socket);
    let v = line(&answer_of(
        cmd,
        r#"{"action_type":"read_file","target":"src/main.rs"}"#,
    ));
    // What the admin API would answer the child: its run's policy.
    assert_eq!(
        (&v["policy_id"], &v["rule_id"]),
        (&"run-only".into(), &"run.default".into())
    );
    let record = decision_records(&home).pop().unwrap();
    assert!(
        record["run_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{record}"
    );
    // Outside the run, the configured policy decides the same request.
    let v = line(&nc(
        &socket,
        r#"{"action_type":"read_file","target":"src/main.rs"}"#,
    ));
    assert_eq!(v["policy_id"], "agent-baseline");
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

use std::os::unix::fs::MetadataExt;

/// The Python client as another uid (no user entry needed).
fn python_as(uid: u32, socket: &Path, request: &str) -> String {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        // The system's: a per-user install (pyenv under /root) is not
        // reachable by other users.
        "/usr/bin/python3",
        "-c",
        PY_CLIENT,
    ])
    .arg(socket);
    answer_of(cmd, request)
}

#[test]
fn a_peer_the_admin_check_refuses_gets_peer_refused() {
    if !is_root() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs root (to connect as other uids) and /usr/bin/python3");
        return;
    }
    let dir = socket_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("cavra.sock");
    let home = daemon_with_cavra(&socket, "[admin]\nallow_uids = [65533]\n");
    // Open to other users as the admin socket is; the peer check decides.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let request = r#"{"action_type":"read_file","target":"config/prod.secret"}"#;
    let before = decision_records(&home).len();

    let answer = python_as(65534, &socket, request);
    assert!(!answer.starts_with("ERROR"), "{answer}");
    assert_eq!(error_code(&answer), "peer_refused", "{answer}");
    assert!(home.log().contains("refused CAVRA connection: uid 65534"));
    assert_eq!(decision_records(&home).len(), before, "nothing decided");

    // A user [admin] names is decided for, and attributed by uid.
    let v = line(&python_as(65533, &socket, request));
    assert_eq!(v["rule_id"], "filesystem.read.block");
    assert!(
        wait_for(Duration::from_secs(5), || home
            .files_containing("\"cavra_request\"")
            .iter()
            .any(|f| std::fs::read_to_string(f)
                .unwrap()
                .contains("\"uid\":65533"))),
        "the request of uid 65533 is attributed in the evidence log"
    );
}

/// A compiled policy as CAVRA writes it, with sections keyward converts
/// and sections it cannot.
const CAVRA_POLICY: &str = r#"{
  "metadata": {"id": "cavra-team", "title": "Team", "version": "0.2.0"},
  "filesystem": {"block_read": [".env", "**/*.pem", "config/*.secret"],
                 "require_approval_write": ["policies/**"]},
  "commands": {"block": ["terraform apply*", "git push origin main"],
               "allow": ["terraform plan*", "pytest*"],
               "require_approval": ["git tag*"]},
  "git": {"require_pull_request": true, "block_direct_push_to_protected_branch": true},
  "mcp": {"allowed_servers": ["github"], "block_unknown_servers": true},
  "release_governance": {"require_approval_state": "approved"},
  "evidence": {"require_agent_manifest": true}
}"#;

#[test]
fn a_cavra_compiled_policy_loads_from_policy_files_and_import_warns() {
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let home = TestHome::new();
    write_config(
        &home,
        &format!(
            "[policy]\nfiles = [\"cavra-team.json\"]\n\n[compat.cavra]\nsocket = {:?}\n",
            socket.display().to_string()
        ),
    );
    std::fs::write(home.file("cavra-team.json"), CAVRA_POLICY).unwrap();
    let check = home.run(&["config", "check"]);
    assert_eq!(check.code, 0, "{check:?}");
    home.start(&[]);
    // The daemon names what it could not convert.
    let log = home.log();
    for section in [
        "`release_governance`",
        "`evidence`",
        "`git.require_pull_request`",
    ] {
        assert!(
            log.contains(&format!(
                "policy.files: {}",
                home.file("cavra-team.json").display()
            )) && log.contains(section),
            "{section} warned in the log:\n{log}"
        );
    }
    let ask = |request: &str| line(&nc(&socket, request));
    let v = ask(r#"{"action_type":"read_file","target":"config/prod.secret"}"#);
    assert_eq!(
        (&v["decision"], &v["rule_id"], &v["policy_id"]),
        (
            &"block".into(),
            &"filesystem.read.block".into(),
            &"cavra-team".into()
        )
    );
    // CAVRA's `*` crosses directories.
    let v = ask(r#"{"action_type":"read_file","target":"config/deep/prod.secret"}"#);
    assert_eq!(v["decision"], "block");
    let v = ask(r#"{"action_type":"execute_command","target":"git tag v1.0"}"#);
    assert_eq!(v["rule_id"], "commands.require_approval");
    let v = ask(r#"{"action_type":"git","requested_operation":"push","target":"refs/heads/main"}"#);
    assert_eq!(v["rule_id"], "git.protected_branch.block_direct_push");
    let v = ask(r#"{"action_type":"mcp_tool_call","server":"random","tool":"x"}"#);
    assert_eq!(v["rule_id"], "mcp.server.trust.block_unknown");

    // `keyward policy import`: one warning per part left out, on stderr;
    // the TOML on stdout.
    let import = home.run(&[
        "policy",
        "import",
        home.file("cavra-team.json").to_str().unwrap(),
    ]);
    assert_eq!(import.code, 0, "{import:?}");
    let warnings: Vec<&str> = import
        .stderr
        .lines()
        .filter(|l| l.starts_with("keyward: warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{}", import.stderr);
    for part in [
        "`git.require_pull_request`",
        "`release_governance`",
        "`evidence`",
    ] {
        assert!(import.stderr.contains(part), "{part}: {}", import.stderr);
    }
    assert!(
        import
            .stdout
            .starts_with("# Imported by `keyward policy import`")
    );
    assert!(!import.stdout.contains("keyward: warning"));
    // `policy check` and `policy test` read it too, with the same warnings.
    let check = home.run(&[
        "policy",
        "check",
        home.file("cavra-team.json").to_str().unwrap(),
    ]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.contains("valid policy \"cavra-team\""),
        "{check:?}"
    );
    assert_eq!(check.stderr.matches("keyward: warning: ").count(), 3);

    // A broken CAVRA file is a config error naming file and key; the
    // running daemon keeps its policy on reload.
    std::fs::write(
        home.file("cavra-team.json"),
        r#"{"filesystem": {"block_read": ".env"}}"#,
    )
    .unwrap();
    let (status, body) = home.http("POST", "/v1/reload", None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("policy.files")
            && body.contains("`filesystem.block_read` must be a list of strings"),
        "{body}"
    );
    let v = ask(r#"{"action_type":"read_file","target":".env"}"#);
    assert_eq!(v["policy_id"], "cavra-team");
}

#[test]
fn cavra_socket_config_errors_are_clear_and_bind_nothing() {
    let home = TestHome::new();
    let long = format!("/tmp/{}/cavra.sock", "d".repeat(110));
    write_config(&home, &format!("[compat.cavra]\nsocket = {long:?}\n"));
    let start = home.run(&["daemon", "start"]);
    assert_eq!(start.code, 64, "{start:?}");
    assert!(
        start.stderr.contains("compat.cavra.socket") && start.stderr.contains("107-byte limit"),
        "{start:?}"
    );
    // The admin socket's own path.
    write_config(&home, "[compat.cavra]\nsocket = \"keyward.sock\"\n");
    let start = home.run(&["daemon", "start"]);
    assert_eq!(start.code, 64, "{start:?}");
    assert!(start.stderr.contains("is the admin socket"), "{start:?}");
    assert!(!home.socket().exists());
    write_config(&home, "[compat.cavra]\nsockett = \"x.sock\"\n");
    let check = home.run(&["config", "check"]);
    assert_eq!(check.code, 64, "{check:?}");
    assert!(check.stderr.contains("sockett"), "{check:?}");

    // Something else already answers on the path: the daemon does not
    // start and never removes it.
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    write_config(
        &home,
        &format!(
            "[compat.cavra]\nsocket = {:?}\n",
            socket.display().to_string()
        ),
    );
    let start = home.run(&["daemon", "start"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("refusing to remove a live socket"),
        "{start:?}"
    );
    assert!(socket.exists());
    assert!(
        !home.socket().exists(),
        "the admin socket is not left behind"
    );
    drop(other);
    // A relative path is relative to the config file.
    write_config(&home, "[compat.cavra]\nsocket = \"cavra.sock\"\n");
    home.start(&[]);
    let v = line(&nc(
        &home.file("cavra.sock"),
        r#"{"action_type":"read_file","target":"x"}"#,
    ));
    assert_eq!(v["decision"], "allow");
}

/// 64 hex digits: an HMAC key as `keyward audit keygen --hmac` writes it.
const EVIDENCE_KEY: &str = "5e1f0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

#[test]
fn the_evidence_key_can_come_from_the_environment_and_is_never_written_or_passed_on() {
    let dir = socket_dir();
    let socket = dir.path().join("cavra.sock");
    let home = TestHome::new();
    // A key file is configured too: the environment wins (and says so).
    let file_key = dir.path().join("file.key");
    std::fs::write(&file_key, "ab".repeat(32)).unwrap();
    write_config(
        &home,
        &format!(
            "[audit]\nhmac_key_file = {:?}\n\n[compat.cavra]\nsocket = {:?}\n",
            file_key.display().to_string(),
            socket.display().to_string()
        ),
    );
    let start = home
        .cmd(&["daemon", "start", "--detach"])
        .env("KEYWARD_EVIDENCE_HMAC_KEY", EVIDENCE_KEY)
        .output()
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    let v = line(&nc(
        &socket,
        r#"{"action_type":"read_file","target":"config/prod.secret"}"#,
    ));
    assert_eq!(v["decision"], "block");
    // A program under `keyward run` does not get the key, even when the
    // caller's environment holds it.
    let child = home
        .cmd(&[
            "run",
            "--",
            "sh",
            "-c",
            "printenv KEYWARD_EVIDENCE_HMAC_KEY || echo absent",
        ])
        .env("KEYWARD_EVIDENCE_HMAC_KEY", EVIDENCE_KEY)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&child.stdout).trim(),
        "absent",
        "{child:?}"
    );
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        home.log().contains("audit.hmac_key_file"),
        "the ignored file is named"
    );

    // The records verify with the key from the environment ...
    let verify = home
        .cmd(&["audit", "verify", "--json"])
        .env("KEYWARD_EVIDENCE_HMAC_KEY", EVIDENCE_KEY)
        .output()
        .unwrap();
    let report = json(&String::from_utf8_lossy(&verify.stdout));
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(report["valid"], true);
    assert!(report["signed_records"].as_u64().unwrap() >= 3, "{report}");
    // ... and with the same key as a file, but not with the file's key.
    let env_key_file = dir.path().join("env.key");
    std::fs::write(&env_key_file, EVIDENCE_KEY).unwrap();
    let verify = home.run(&[
        "audit",
        "verify",
        "--hmac-key-file",
        env_key_file.to_str().unwrap(),
    ]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let verify = home.run(&[
        "audit",
        "verify",
        "--hmac-key-file",
        file_key.to_str().unwrap(),
    ]);
    assert_eq!(verify.code, 1, "{verify:?}");

    // The key is in no file of the home (log, evidence, head, runs) and in
    // no output.
    assert_eq!(home.files_containing(EVIDENCE_KEY), Vec::<PathBuf>::new());
    let raw_bytes = hex_decode(EVIDENCE_KEY);
    for path in walk(&home.path) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(raw_bytes.len()).any(|w| w == raw_bytes),
            "raw key bytes in {}",
            path.display()
        );
    }
    for out in [&start.stdout, &start.stderr, &child.stdout, &child.stderr] {
        assert!(!String::from_utf8_lossy(out).contains(EVIDENCE_KEY));
    }

    // A key too short is a clear error naming the variable, not the value.
    let short = "0123456789abcdef";
    let bad = home
        .cmd(&["daemon", "start"])
        .env("KEYWARD_EVIDENCE_HMAC_KEY", short)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(
        stderr.contains("KEYWARD_EVIDENCE_HMAC_KEY") && stderr.contains("at least 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains(short), "{stderr}");
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}
