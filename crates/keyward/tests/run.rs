//! `keyward run` and the egress proxy end to end: a real daemon, a real
//! HTTPS upstream (the test kit's origin, with a test CA trusted via
//! proxy.upstream_ca), real clients (curl, python3 urllib) as the run's
//! child.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestHome, json, wait_for};

use common::upstream::{SECRET, Upstream, proxy_port, run_sh, setup};
use keyward_testkit::{Answer, Origin, Received};

#[test]
fn the_child_uses_the_secret_without_ever_holding_it() {
    let (home, upstream) = setup("");
    let script = format!(
        r#"
import json, os, urllib.request
environ = open("/proc/self/environ", "rb").read()
print("ENV_HAS_SECRET", b"{SECRET}" in environ)
print("PLACEHOLDER", os.environ["LOCAL_TOKEN"])
resp = urllib.request.urlopen("{url}")
print("HEADER", resp.headers["x-echo-auth"])
raw = resp.read()
print("LENGTHS", len(raw), resp.headers.get("content-length"))
body = raw.decode()
print("RESPONSE", body)
"#,
        url = upstream.url("/user")
    );
    let run = home
        .cmd(&["run", "--grant", "local", "--", "python3", "-c", &script])
        .env("SOME_COPY_OF_IT", SECRET)
        .output()
        .unwrap();
    let out = common::Run::from(run);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("ENV_HAS_SECRET False"), "{out:?}");
    let placeholder = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("PLACEHOLDER "))
        .unwrap()
        .to_owned();
    assert!(placeholder.starts_with("kw_ph_"));

    // The upstream saw the real secret, injected by the proxy...
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    assert!(got[0]["headers"].get("proxy-authorization").is_none());
    // ...and its echo reached the child scrubbed to the placeholder, with
    // a Content-Length that is the scrubbed body's (the secret and the
    // placeholder differ in length).
    assert!(!out.stdout.contains(SECRET), "{out:?}");
    assert_ne!(SECRET.len(), placeholder.len());
    let lengths = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("LENGTHS "))
        .unwrap();
    let (body_len, declared) = lengths.split_once(' ').unwrap();
    assert_eq!(body_len, declared, "{out:?}");
    assert!(
        out.stdout.contains(&format!("HEADER Bearer {placeholder}")),
        "response headers are scrubbed too: {out:?}"
    );
    assert!(
        out.stdout.contains(&format!("Bearer {placeholder}")),
        "{out:?}"
    );

    // One event per request, naming the grant, never the secret; its line
    // follows the evidence record onto disk, a few milliseconds later.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = home.log();
            log.contains("egress") && log.contains("injected=\"local\"")
        }),
        "{}",
        home.log()
    );
    assert!(
        home.files_containing(SECRET).is_empty(),
        "{:?}",
        home.files_containing(SECRET)
    );
    // The run is gone once the child exited.
    let runs = json(
        &home
            .run(&["--log-format", "text", "status", "--json"])
            .stdout,
    );
    assert_eq!(runs["running"], true);
    let (_, body) = home.http("GET", "/v1/runs", None);
    assert_eq!(json(&body)["runs"].as_array().unwrap().len(), 0, "{body}");
}

#[test]
fn curl_placeholders_are_swapped_only_toward_granted_hosts() {
    let (home, upstream) = setup("");
    // curl sends the placeholder itself; the proxy swaps it for the secret.
    let url = upstream.url("/swap");
    let run = run_sh(
        &home,
        &["local"],
        &format!("curl -sS -H \"X-Token: $LOCAL_TOKEN\" {url}"),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let got = upstream.received();
    assert_eq!(got[0]["headers"]["x-token"], SECRET);
    assert!(!run.stdout.contains(SECRET));

    // The placeholder toward a host the grant does not name is refused.
    let other = format!("https://127.0.0.1:{}/leak", upstream.port);
    let run = run_sh(
        &home,
        &["local"],
        &format!("curl -sk -D - -H \"X-Token: $LOCAL_TOKEN\" {other}"),
    );
    assert!(run.stdout.contains("403"), "{run:?}");
    assert!(
        run.stdout
            .contains("x-keyward-blocked: placeholder_wrong_host"),
        "{run:?}"
    );
    assert_eq!(upstream.received().len(), 1, "nothing reached the upstream");
}

#[test]
fn strict_mode_blocks_unnamed_hosts_with_a_reason() {
    let (home, upstream) = setup("");
    let run = home.run(&[
        "run",
        "--network",
        "strict",
        "--grant",
        "local",
        "--",
        "sh",
        "-c",
        "curl -sS -D - http://example.invalid/",
    ]);
    assert!(run.stdout.contains("403"), "{run:?}");
    assert!(
        run.stdout.contains("x-keyward-blocked: network.strict"),
        "{run:?}"
    );
    assert!(run.stdout.contains("--allow example.invalid"), "{run:?}");

    // Granted hosts pass in strict mode.
    let ok = home.run(&[
        "run",
        "--network",
        "strict",
        "--grant",
        "local",
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &upstream.url("/ok"),
    ]);
    assert_eq!(ok.stdout, "200", "{ok:?}");
}

/// Metadata stays blocked even when allowed; run again inside a private
/// network namespace (`unshare -n`, only loopback up, by
/// `common::rerun_without_network`), so a regression cannot reach a real
/// endpoint.
#[test]
fn metadata_stays_blocked_even_when_allowed() {
    if common::rerun_without_network("metadata_stays_blocked_even_when_allowed") {
        return;
    }
    let (home, _upstream) = setup("");
    let meta = home.run(&[
        "run",
        "--network",
        "strict",
        "--allow",
        "169.254.169.254",
        "--",
        "sh",
        "-c",
        "curl -sS -D - http://169.254.169.254/latest/meta-data/",
    ]);
    assert!(
        meta.stdout.contains("x-keyward-blocked: network.metadata"),
        "{meta:?}"
    );
}

#[test]
fn the_proxy_requires_a_live_run_token() {
    let (home, upstream) = setup("");
    let port = proxy_port(&home);
    let url = upstream.url("/x");
    let no_token = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--proxy-insecure",
        ])
        .args([
            "-x",
            &format!("http://127.0.0.1:{port}"),
            "http://localhost:1/",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&no_token.stdout), "407");

    // A removed run's token is refused at once.
    let (_, body) = home.http("POST", "/v1/runs", Some("{\"grants\":[\"local\"]}"));
    let created = json(&body);
    let proxy_url = created["proxy_url"].as_str().unwrap().to_owned();
    let via = |proxy: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(home.file("ca/public/bundle.pem"))
            .args(["-x", proxy, &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(via(&proxy_url), "200");
    let id = created["run_id"].as_str().unwrap();
    let (status, _) = home.http("DELETE", &format!("/v1/runs/{id}"), None);
    assert_eq!(status, 200);
    // curl reports a refused CONNECT as 000 with the proxy's 407 in -w's
    // http_connect; check the plain-http path for the status itself.
    let plain = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-x", &proxy_url, "http://localhost:1/"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "407");
    assert_ne!(via(&proxy_url), "200");
}

#[test]
fn runs_api_validates_and_tracks_processes() {
    let (home, _upstream) = setup("");
    let (status, body) = home.http("POST", "/v1/runs", Some("{\"grants\":[\"nope\"]}"));
    assert_eq!(status, 400, "{body}");
    let err = json(&body);
    assert_eq!(err["error"]["code"], "unknown_grant");
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));

    // A run bound to a process ends when the process does.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let (status, body) = home.http(
        "POST",
        "/v1/runs",
        Some(&format!(
            "{{\"grants\":[\"local\"],\"pid\":{}}}",
            sleeper.id()
        )),
    );
    assert_eq!(status, 200, "{body}");
    let created = json(&body);
    assert!(created["token"].as_str().unwrap().len() == 64);
    let id = created["run_id"].as_str().unwrap().to_owned();
    let (status, listed) = home.http("GET", &format!("/v1/runs/{id}"), None);
    assert_eq!(status, 200);
    assert!(
        !listed.contains(created["token"].as_str().unwrap()),
        "tokens are returned once"
    );
    // A new run is in the registry's journal until the next fold.
    let runs_file = std::fs::read_to_string(home.file("runs.json.journal")).unwrap();
    assert!(runs_file.contains(&id) && !runs_file.contains(created["token"].as_str().unwrap()));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(wait_for(Duration::from_secs(20), || home
        .http("GET", &format!("/v1/runs/{id}"), None)
        .0
        == 404));
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .contains("run ended: its process exited")),
        "{}",
        home.log()
    );

    // Sealed vault: no run can be created for a vault grant.
    let home2 = TestHome::new();
    assert_eq!(
        home2
            .run_stdin(&["vault", "init", "--passphrase"], "pw\n")
            .code,
        0
    );
    assert_eq!(home2.run_stdin(&["secret", "set", "github"], "x").code, 0);
    assert_eq!(home2.run(&["vault", "seal"]).code, 0);
    let (status, body) = home2.http("POST", "/v1/runs", Some("{\"grants\":[\"github\"]}"));
    assert_eq!(status, 423, "{body}");
    let run = home2.run(&["run", "--grant", "github", "--", "true"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("keyward vault unseal"), "{run:?}");
}

#[test]
fn a_process_inside_a_run_is_confined() {
    let (home, _upstream) = setup("");
    let sock = home.socket();
    let run = home.run(&[
        "run", "--", "sh", "-c",
        &format!(
            "curl -sS --unix-socket {s} http://k/v1/secrets; echo; curl -sS --unix-socket {s} http://k/v1/health",
            s = sock.display()
        ),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("run_confined"), "{run:?}");
    assert!(
        run.stdout.contains("\"status\":\"ok\""),
        "health stays open: {run:?}"
    );
}

#[test]
fn exit_status_and_signals_pass_through() {
    let (home, _upstream) = setup("");
    assert_eq!(home.run(&["run", "--", "sh", "-c", "exit 7"]).code, 7);
    assert_eq!(
        home.run(&["run", "--", "sh", "-c", "kill -TERM $$"]).code,
        143
    );
    // SIGTERM to `keyward run` reaches the child (once its trap is set);
    // so does SIGQUIT (Ctrl-\), which must not kill the wrapper and leave
    // the program's processes outside their run.
    for (sig, code) in [("TERM", 42), ("QUIT", 33)] {
        let ready = home.path.parent().unwrap().join(format!("trap-set-{sig}"));
        let child = home
            .cmd(&[
                "run",
                "--",
                "sh",
                "-c",
                &format!(
                    "trap 'exit {code}' {sig}; : > '{}'; sleep 30 & wait",
                    ready.display()
                ),
            ])
            .spawn()
            .unwrap();
        assert!(wait_for(Duration::from_secs(30), || ready.exists()));
        common::signal(child.id(), sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{sig}");
    }
    // A program that cannot start: `a_program_that_cannot_start_exits_like_a_shell`.
}

#[test]
fn a_child_keeps_working_across_a_daemon_restart() {
    let (home, upstream) = setup("");
    let marker = home.path.parent().unwrap().join("go");
    let script = format!(
        r#"
import os, time, urllib.request
print(urllib.request.urlopen("{url}").status, flush=True)
while not os.path.exists("{marker}"):
    time.sleep(0.05)
print(urllib.request.urlopen("{url}").status, flush=True)
"#,
        url = upstream.url("/again"),
        marker = marker.display()
    );
    let mut child = home
        .cmd(&["run", "--grant", "local", "--", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart only once the first answer reached the child.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "200\n", "{}", home.log());
    let restart = home.run(&["daemon", "restart"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    std::fs::write(&marker, "").unwrap();
    let mut second = String::new();
    stdout.read_line(&mut second).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", home.log());
    assert_eq!(second, "200\n");
    let got = upstream.received();
    assert_eq!(
        got[1]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
}

#[test]
fn an_untrusted_upstream_certificate_is_a_502_saying_why() {
    let home = TestHome::new();
    let upstream = Upstream::start(home.path.parent().unwrap());
    let run = home.run(&[
        "run",
        "--",
        "curl",
        "-sS",
        "-w",
        "\n%{http_code}",
        &upstream.url("/x"),
    ]);
    assert!(run.stdout.ends_with("502"), "{run:?}");
    assert!(
        run.stdout.contains("keyward could not reach localhost"),
        "{run:?}"
    );
    assert!(run.stdout.to_lowercase().contains("certificate"), "{run:?}");
    assert!(upstream.received().is_empty());
}

#[test]
fn ca_is_private_and_exportable() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    // `ca path` only reads the home; the daemon makes the CA.
    home.start(&[]);
    let paths = home.run(&["ca", "path", "--json"]);
    assert_eq!(paths.code, 0, "{paths:?}");
    let v = json(&paths.stdout);
    let bundle = std::fs::read_to_string(v["bundle"].as_str().unwrap()).unwrap();
    let pem = home.run(&["ca", "export"]);
    assert!(
        pem.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{pem:?}"
    );
    assert!(bundle.ends_with(&pem.stdout), "the bundle ends with the CA");
    let der = home
        .cmd(&["ca", "export", "--format", "der"])
        .output()
        .unwrap();
    assert_eq!(der.stdout[0], 0x30, "DER starts with a SEQUENCE");
    let mode = |p: &str| {
        std::fs::metadata(home.file(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca/ca.key"), 0o600);
    assert_eq!(mode("ca"), 0o700);

    // Rotation: a new CA, the old one kept in the bundle; interception
    // still works with the new one.
    let rotated = home.run(&["ca", "rotate"]);
    assert_eq!(rotated.code, 0, "{rotated:?}");
    let new_pem = home.run(&["ca", "export"]).stdout;
    assert_ne!(new_pem, pem.stdout);
    let bundle = std::fs::read_to_string(v["bundle"].as_str().unwrap()).unwrap();
    assert!(bundle.contains(&new_pem) && bundle.contains(&pem.stdout));
    assert_eq!(mode("ca/ca.key"), 0o600);
}

#[test]
fn interception_uses_the_rotated_ca() {
    let (home, upstream) = setup("");
    let first = home.run(&[
        "run",
        "--grant",
        "local",
        "--",
        "curl",
        "-sS",
        &upstream.url("/a"),
    ]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(home.run(&["ca", "rotate"]).code, 0);
    let only_new = home.path.parent().unwrap().join("new-ca.pem");
    std::fs::write(&only_new, home.run(&["ca", "export"]).stdout).unwrap();
    let second = home.run(&[
        "run",
        "--grant",
        "local",
        "--",
        "curl",
        "-sS",
        "--cacert",
        only_new.to_str().unwrap(),
        &upstream.url("/b"),
    ]);
    assert_eq!(
        second.code, 0,
        "leaves are signed by the new CA: {second:?}"
    );
}

#[test]
fn placeholders_in_request_bodies_are_swapped_refused_or_too_large() {
    let (home, upstream) = setup("");
    // Bodies are left alone unless the grant opts in: a granted API that
    // stores a body and returns it must not be a way to the secret.
    let url = upstream.url("/body");
    let post = format!("curl -sS -X POST --data \"{{\\\"token\\\":\\\"$LOCAL_TOKEN\\\"}}\" {url}");
    let run = run_sh(&home, &["local"], &post);
    assert_eq!(run.code, 0, "{run:?}");
    let got = upstream.received();
    assert!(
        got[0]["body"].as_str().unwrap().contains("kw_ph_"),
        "{got:?}"
    );
    let config = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        config.replace(
            "placeholder_env = \"LOCAL_TOKEN\"\n",
            "placeholder_env = \"LOCAL_TOKEN\"\nsubstitute_body = true\n",
        ),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);

    // A small body: swapped toward the granted host.
    let run = run_sh(&home, &["local"], &post);
    assert_eq!(run.code, 0, "{run:?}");
    let got = upstream.received();
    assert_eq!(got[1]["body"], format!("{{\"token\":\"{SECRET}\"}}"));
    assert!(!run.stdout.contains(SECRET), "echo is scrubbed: {run:?}");

    // Toward another host: refused.
    let other = format!("https://127.0.0.1:{}/body", upstream.port);
    let run = run_sh(
        &home,
        &["local"],
        &format!("curl -sk -D - -X POST --data \"x=$LOCAL_TOKEN\" {other}"),
    );
    assert!(
        run.stdout
            .contains("x-keyward-blocked: placeholder_wrong_host"),
        "{run:?}"
    );

    // Over the limit with a placeholder at the end: 413, never forwarded.
    let big = home.path.parent().unwrap().join("big.txt");
    let run = home.run(&[
        "run", "--grant", "local", "--", "sh", "-c",
        &format!(
            "head -c 2000000 /dev/zero | tr '\\0' a > {b}; printf '%s' \"$LOCAL_TOKEN\" >> {b}; curl -sS -w '\\n%{{http_code}}' -X POST --data-binary @{b} {url}",
            b = big.display()
        ),
    ]);
    assert!(run.stdout.ends_with("413"), "{run:?}");
    assert!(run.stdout.contains("max_substitution_body"), "{run:?}");
    // The upload was cut before the placeholder's last byte left: no
    // complete placeholder reached the upstream.
    std::thread::sleep(Duration::from_millis(200));
    upstream.settle();
    // (The first request, sent before the opt-in, carried one on purpose.)
    for rec in upstream.received().iter().skip(1) {
        let body = rec["body"].as_str().unwrap_or_default();
        let complete = body.match_indices("kw_ph_").any(|(i, _)| {
            body[i + 6..]
                .chars()
                .take(32)
                .filter(char::is_ascii_hexdigit)
                .count()
                == 32
        });
        assert!(!complete, "a whole placeholder reached the upstream");
    }

    // A large body without a placeholder streams through.
    let run = home.run(&[
        "run", "--grant", "local", "--", "sh", "-c",
        &format!(
            "head -c 3000000 /dev/zero | tr '\\0' b > {b}; curl -sS -o /dev/null -w '%{{http_code}}' -X POST --data-binary @{b} {url}",
            b = big.display()
        ),
    ]);
    assert_eq!(run.stdout, "200", "{run:?}");
}

#[test]
fn intercept_granted_relays_other_hosts_untouched() {
    let (home, upstream) = setup("intercept = \"granted\"");
    // 127.0.0.1 is not a granted host: the tunnel is relayed byte for byte,
    // so the client sees the upstream's own certificate, not a keyward leaf.
    let url = format!("https://127.0.0.1:{}/raw", upstream.port);
    let run = home.run(&[
        "run",
        "--grant",
        "local",
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-k",
        &url,
    ]);
    assert_eq!(run.stdout, "200", "{run:?}");
    let issuer = run_sh(
        &home,
        &[],
        &format!("curl -sk -v {url} 2>&1 | grep -i 'issuer:'"),
    );
    assert!(
        issuer.stdout.to_lowercase().contains("issuer:"),
        "{issuer:?}"
    );
    assert!(!issuer.stdout.contains("keyward local CA"), "{issuer:?}");
    assert!(
        upstream.received()[0]["headers"]
            .get("authorization")
            .is_none()
    );
    // The granted host is still intercepted and injected.
    let run = home.run(&[
        "run",
        "--grant",
        "local",
        "--",
        "curl",
        "-sS",
        &upstream.url("/inj"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        upstream.received()[2]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
}

#[test]
fn two_hundred_concurrent_clients_see_no_error() {
    let (home, upstream) = setup("");
    let script = format!(
        r#"
import http.client, os, ssl, threading, urllib.parse
proxy = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
auth = "Bearer " + proxy.password
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
errors, ok = [], [0]
lock = threading.Lock()
def client():
    try:
        conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx, timeout=60)
        conn.set_tunnel("localhost", {port}, headers={{"Proxy-Authorization": auth}})
        for i in range(100):
            conn.request("GET", "/c")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or b"Bearer kw_ph_" not in body:
                raise Exception("status %d" % r.status)
            with lock:
                ok[0] += 1
    except Exception as e:
        with lock:
            errors.append(repr(e))
threads = [threading.Thread(target=client) for _ in range(200)]
for t in threads: t.start()
for t in threads: t.join()
print(ok[0], len(errors), errors[:3])
"#,
        port = upstream.port
    );
    let run = home.run(&["run", "--grant", "local", "--", "python3", "-c", &script]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("20000 0 []"), "{run:?}");
}

#[test]
fn a_100_mib_download_streams_in_bounded_memory() {
    let (home, upstream) = setup("");
    let size = 100 * 1024 * 1024;
    // Through interception, injection and scrubbing (the grant applies).
    let run = run_sh(
        &home,
        &["local"],
        &format!(
            "curl -sS -o /dev/null -w '%{{size_download}}' {}",
            upstream.url(&format!("/big/{size}"))
        ),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, size.to_string(), "{run:?}");
    let pid = home.pid_in_file().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("daemon peak RSS after a 100 MiB download: {peak_kb} kB");
    assert!(
        peak_kb < 64 * 1024,
        "daemon peak RSS {peak_kb} kB for a 100 MiB download"
    );
}

#[test]
fn demo_checks_every_claim() {
    let home = TestHome::new();
    let run = home.run(&["demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("every check held."), "{run:?}");
    assert_eq!(run.stdout.matches("[ok]").count(), 7, "{run:?}");
    assert!(run.stdout.contains("chain verified"), "{run:?}");
    assert!(!home.path.exists(), "the demo uses its own temporary home");
}

/// Answers a WebSocket handshake and then echoes frames, after telling
/// the client the credential it got (a careless server).
fn websocket_answer(req: &Received) -> Answer {
    use base64::Engine as _;
    let key = format!(
        "{}258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
        req.header("sec-websocket-key").unwrap_or_default()
    );
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let auth = req.header("authorization").unwrap_or_default().to_owned();
    Answer::upgrade("websocket", move |mut io| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let frame = |payload: &[u8]| [&[0x81, payload.len() as u8][..], payload].concat();
        if io
            .write_all(&frame(format!("you sent {auth}").as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let mut head = [0u8; 2];
            if io.read_exact(&mut head).await.is_err() {
                return;
            }
            let mut mask = [0u8; 4];
            if head[1] & 0x80 != 0 && io.read_exact(&mut mask).await.is_err() {
                return;
            }
            let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
            if io.read_exact(&mut payload).await.is_err() {
                return;
            }
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            if io.write_all(&frame(&payload)).await.is_err() {
                return;
            }
        }
    })
    .header("sec-websocket-accept", &accept)
}

#[test]
fn websocket_upgrades_get_injection_and_scrubbed_frames() {
    let (home, upstream) = setup("");
    // Same CA as the upstream the config already trusts.
    let ws = Origin::builder()
        .identity(upstream.identity.clone())
        .fallback(websocket_answer)
        .start_background();
    let port = ws.port();
    let config = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        config.replace("hosts = [\"", &format!("hosts = [\"localhost:{port}\", \"")),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    let client = format!(
        r#"
import http.client, os, ssl, urllib.parse
proxy = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["http/1.1"])
conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx, timeout=10)
conn.set_tunnel("localhost", {port}, headers={{"Proxy-Authorization": "Bearer " + proxy.password}})
conn.connect()
s = conn.sock
s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print(head.split(b"\r\n")[0].decode())
def recv_exact(n):
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return data
def read_frame():
    head = recv_exact(2)
    return recv_exact(head[1] & 0x7f).decode()
print(read_frame())
key = b"\x01\x02\x03\x04"
payload = b"ping-frame-bytes"
s.sendall(bytes([0x81, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload)))
print(read_frame())
"#
    );
    let run = home.run(&["run", "--grant", "local", "--", "python3", "-c", &client]);
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    let masked = format!("[REDACTED]{}", "*".repeat(SECRET.len() - 10));
    assert_eq!(
        run.stdout,
        format!("HTTP/1.1 101 Switching Protocols\nyou sent Bearer {masked}\nping-frame-bytes\n"),
        "the secret the server sent back in a frame reached the child masked: {run:?}"
    );
    let seen: Vec<String> = ws
        .received()
        .iter()
        .map(|r| {
            format!(
                "{}|{}",
                r.header("authorization").unwrap_or_default(),
                r.header("sec-websocket-extensions").unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [format!("Bearer {SECRET}|")],
        "the handshake got the injected secret, and no compression was offered"
    );
    drop(upstream);
}

#[test]
fn git_ls_remote_over_https_gets_basic_auth_injected() {
    if Command::new("git").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "git is missing");
        eprintln!("SKIPPED: no git");
        return;
    }
    let (home, upstream) = setup("");
    let dir = home.path.parent().unwrap().to_owned();
    let repo = dir.join("srv/repo.git");
    let git = |args: &[&str], cwd: &Path| {
        let out = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::fs::create_dir_all(dir.join("work")).unwrap();
    git(&["init", "-q", "-b", "main"], &dir.join("work"));
    git(
        &["commit", "-q", "--allow-empty", "-m", "first"],
        &dir.join("work"),
    );
    let head = git(&["rev-parse", "HEAD"], &dir.join("work"))
        .trim()
        .to_owned();
    git(
        &["clone", "-q", "--bare", "work", repo.to_str().unwrap()],
        &dir,
    );
    git(&["update-server-info"], &repo);

    // A static server of `srv` for the dumb HTTP protocol that demands
    // basic auth with the right password (same CA as the upstream).
    let root = dir.join("srv");
    let server = Origin::builder()
        .identity(upstream.identity.clone())
        .fallback(move |req| {
            if req.basic_auth() != Some(("x-access-token".into(), SECRET.into())) {
                return Answer::status(401).header("www-authenticate", "Basic realm=\"git\"");
            }
            let path = req.path.split('?').next().unwrap_or_default();
            match std::fs::read(root.join(path.trim_start_matches('/'))) {
                Ok(bytes) => {
                    Answer::bytes(bytes).header("content-type", "application/octet-stream")
                }
                Err(_) => Answer::status(404),
            }
        })
        .start_background();
    let port = server.port();
    let url = format!("https://localhost:{port}/repo.git");
    let config = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "{config}\n[grants.git]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{port}\"]\ninject = {{ basic = {{ username = \"x-access-token\" }} }}\n",
        ),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);

    // Without the grant the server refuses: the proof is the injection.
    let refused = home
        .cmd(&["run", "--", "git", "ls-remote", &url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let run = home.run(&["run", "--grant", "git", "--", "git", "ls-remote", &url]);
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    assert!(
        run.stdout.contains(&head) && run.stdout.contains("refs/heads/main"),
        "{run:?}"
    );
}

#[test]
fn a_running_child_gets_a_rotated_file_secret_after_the_cache_ttl() {
    let (home, upstream) = setup("");
    let dir = home.path.parent().unwrap().to_owned();
    let token = dir.join("rotating-token");
    std::fs::write(&token, "first-value-aaaa\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "{config}\n[backends]\ncache_ttl = \"1s\"\n\n[grants.rot]\nsecret = \"file:{}\"\nhosts = [\"localhost:{}\"]\ninject = {{ header = \"X-Rot\" }}\n",
            token.display(),
            upstream.port
        ),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    let marker = dir.join("rotated");
    let script = format!(
        r#"
import os, time, urllib.request
urllib.request.urlopen("{url}").read()
print("first", flush=True)
while not os.path.exists("{marker}"):
    time.sleep(0.05)
urllib.request.urlopen("{url}").read()
"#,
        url = upstream.url("/rot"),
        marker = marker.display()
    );
    let mut child = home
        .cmd(&["run", "--grant", "rot", "--", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    std::fs::write(&token, "second-value-bbbb\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&marker, "").unwrap();
    assert!(child.wait().unwrap().success(), "{}", home.log());
    let got = upstream.received();
    assert_eq!(got[0]["headers"]["x-rot"], "first-value-aaaa");
    assert_eq!(got[1]["headers"]["x-rot"], "second-value-bbbb");
}

/// The proxy evaluates every request as `http_request` against the run's
/// policy: a blocked path gets 403 with the rule, the rest passes; each
/// request is an evidence record with its decision and size, and its log
/// event carries the record's reference.
#[test]
fn the_policy_decides_each_proxied_request_and_each_lands_in_the_evidence_log() {
    let (home, upstream) = setup("");
    let policy = home.path.parent().unwrap().join("egress.toml");
    std::fs::write(
        &policy,
        r#"
[policy]
id = "egress-team"
default = "allow"

[[rules]]
id = "http.admin.block"
action = "http_request"
target = ["localhost:*/admin/**"]
operation = ["POST", "DELETE"]
decision = "block"
reason = "no admin writes from agents"

[[rules]]
id = "http.billing.approval"
action = "http_request"
target = "localhost:*/billing/*"
decision = "require_approval"
approver_group = "finance"
"#,
    )
    .unwrap();
    let script = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}\\n' {ok}; curl -sS -D - -X POST {admin}; curl -sS -D - {billing}",
        ok = upstream.url("/admin/users"),
        admin = upstream.url("/admin/users/1"),
        billing = upstream.url("/billing/invoices"),
    );
    let run = home.run(&[
        "run",
        "--grant",
        "local",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(run.stdout.starts_with("200\n"), "GET passes: {run:?}");
    assert!(
        run.stdout.contains("x-keyward-blocked: http.admin.block"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("policy egress-team rule http.admin.block: no admin writes from agents"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("x-keyward-blocked: http.billing.approval"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("requires approval by finance"),
        "{run:?}"
    );
    upstream.settle();
    let paths: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/admin/users"],
        "blocked requests never reach the upstream"
    );

    // An invalid policy is refused before the program starts.
    let bad = home.path.parent().unwrap().join("bad.toml");
    std::fs::write(&bad, "[policy]\nid = \"x\"\n").unwrap();
    let refused = home.run(&["run", "--policy", bad.to_str().unwrap(), "--", "true"]);
    assert_eq!(refused.code, 64, "a config error: {refused:?}");
    assert!(
        refused.stderr.contains("bad.toml") && refused.stderr.contains("default"),
        "{refused:?}"
    );

    let egress = home.run(&["audit", "tail", "-n", "100", "--kind", "egress", "--json"]);
    let records: Vec<serde_json::Value> = egress.stdout.lines().map(json).collect();
    let ok = records
        .iter()
        .find(|r| r["data"]["request"]["path"] == "/admin/users")
        .unwrap_or_else(|| panic!("no egress record: {egress:?}"));
    assert_eq!(ok["data"]["response"]["status"], 200);
    assert!(
        ok["data"]["response"]["bytes"].as_u64().unwrap() > 0,
        "{ok}"
    );
    assert_eq!(ok["data"]["decision"]["rule_id"], "egress-team.default");
    assert_eq!(ok["data"]["injected"][0], "local");
    let blocked = records
        .iter()
        .find(|r| r["data"]["request"]["path"] == "/admin/users/1")
        .unwrap();
    assert_eq!(blocked["data"]["blocked"], "http.admin.block");
    assert_eq!(blocked["data"]["decision"]["decision"], "block");
    assert!(blocked["run_id"].as_str().unwrap().starts_with("run_"));
    let seq = ok["seq"].as_u64().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || home
            .log()
            .contains(&format!("/{seq}\""))
            || home.log().contains(&format!("/{seq} "))),
        "the egress log line carries the evidence reference: {}",
        home.log()
    );
    assert!(
        home.files_containing(SECRET).is_empty(),
        "{:?}",
        home.files_containing(SECRET)
    );
    let verify = home.run(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// `keyward daemon stop` lets a proxied download in flight finish before
/// the daemon exits (new connections are refused at once).
#[test]
fn stopping_the_daemon_lets_requests_in_flight_finish() {
    let (home, upstream) = setup("");
    let size = 3_000_000;
    let script = format!(
        "curl -sS --limit-rate 1000000 -o /dev/null -w '%{{http_code}} %{{size_download}}' {}",
        upstream.url(&format!("/big/{size}"))
    );
    let child = home
        .cmd(&["run", "--grant", "local", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop once the download is under way.
    assert!(wait_for(Duration::from_secs(30), || {
        upstream
            .received()
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/big/")))
    }));
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        format!("200 {size}"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Neither a secret a live run holds nor a run token lands in the evidence
/// log, wherever a caller puts them: here inside command lines no
/// credential format matches.
#[test]
fn evidence_never_records_a_live_runs_secret_or_a_run_token() {
    let (home, upstream) = setup("");
    let script = format!(
        "curl -sS -o /dev/null {url} && {bin} eval --action execute_command --target 'psql postgres://app:{SECRET}@db/app'; echo eval=$?
         {bin} eval --action execute_command --target \"curl -x $HTTPS_PROXY https://example.com\"; echo PROXY=$HTTPS_PROXY",
        url = upstream.url("/user"),
        bin = common::BIN
    );
    let out = run_sh(&home, &["local"], &script);
    assert!(out.stdout.contains("eval=3"), "{out:?}");
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("PROXY=http://run:"))
        .and_then(|rest| rest.split_once('@'))
        .map(|(token, _)| token.to_owned())
        .unwrap_or_else(|| panic!("no proxy URL: {out:?}"));
    assert_eq!(token.len(), 64, "{token}");
    let tail = home.run(&["audit", "tail", "--kind", "decision", "--json", "-n", "2"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(
        records[0]["data"]["request"]["target"], "psql postgres://app:[REDACTED]@db/app",
        "{tail:?}"
    );
    assert!(
        records[1]["data"]["request"]["target"]
            .as_str()
            .is_some_and(|t| t.contains("run:[REDACTED]@")),
        "{tail:?}"
    );
    for leaked in [SECRET, token.as_str()] {
        assert!(
            home.files_containing(leaked).is_empty(),
            "{:?}",
            home.files_containing(leaked)
        );
    }
}

/// A child that waits for each step of the test before its next request.
fn stepping_child(home: &TestHome, grant: &str, urls: &[String]) -> (Child, PathBuf) {
    let dir = home.path.parent().unwrap().join(format!("steps-{grant}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = String::new();
    for (i, url) in urls.iter().enumerate() {
        script.push_str(&format!(
            "while [ ! -e {d}/go{i} ]; do sleep 0.05; done; curl -s -o /dev/null -w '%{{http_code}}\\n' {url}; : > {d}/done{i}; ",
            d = dir.display()
        ));
    }
    let child = home
        .cmd(&["run", "--grant", grant, "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dir)
}

fn step(dir: &Path, i: usize) {
    std::fs::write(dir.join(format!("go{i}")), "").unwrap();
    assert!(wait_for(Duration::from_secs(30), || dir
        .join(format!("done{i}"))
        .exists()));
}

/// `secret set` and `vault seal` reach a live run at its next request: the
/// new value is injected at once, and while sealed nothing is sent (423
/// `vault_sealed`) rather than a request without its credential.
#[test]
fn a_live_run_sees_a_new_vault_value_and_a_seal_at_once() {
    let (home, upstream) = setup("");
    assert_eq!(home.run(&["daemon", "stop"]).code, 0);
    std::fs::remove_dir_all(home.file("vault")).unwrap();
    assert_eq!(
        home.run_stdin(&["vault", "init", "--passphrase"], "pw\n")
            .code,
        0
    );
    assert_eq!(
        home.run_stdin(&["secret", "set", "local-token"], "first-vault-value")
            .code,
        0
    );
    let urls: Vec<String> = ["/one", "/two", "/three"]
        .iter()
        .map(|p| upstream.url(p))
        .collect();
    let (child, dir) = stepping_child(&home, "local", &urls);
    step(&dir, 0);
    assert_eq!(
        home.run_stdin(&["secret", "set", "local-token"], "second-vault-value")
            .code,
        0
    );
    step(&dir, 1);
    assert_eq!(home.run(&["vault", "seal"]).code, 0);
    step(&dir, 2);
    let out = child.wait_with_output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().collect::<Vec<_>>(),
        ["200", "200", "423"],
        "{out:?}"
    );
    upstream.settle();
    let got = upstream.received();
    assert_eq!(
        got.len(),
        2,
        "nothing reached the upstream while sealed: {got:?}"
    );
    assert_eq!(
        got[0]["headers"]["authorization"],
        "Bearer first-vault-value"
    );
    assert_eq!(
        got[1]["headers"]["authorization"],
        "Bearer second-vault-value"
    );
}

/// An upstream 401 to a request with a cached `file:` secret drops the
/// cached value: the next request reads the rotated file, long before the
/// cache TTL.
#[test]
fn an_upstream_401_makes_a_cached_secret_be_read_again() {
    let (home, upstream) = setup("");
    let token = home.path.parent().unwrap().join("rejected-token");
    std::fs::write(&token, "old-file-value\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "{config}\n[backends]\ncache_ttl = \"5m\"\n\n[grants.rej]\nsecret = \"file:{}\"\nhosts = [\"localhost:{}\"]\ninject = {{ header = \"X-Rej\" }}\n",
            token.display(),
            upstream.port
        ),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    let urls = [upstream.url("/status/401/old"), upstream.url("/after")];
    let (child, dir) = stepping_child(&home, "rej", &urls);
    step(&dir, 0);
    std::fs::write(&token, "new-file-value\n").unwrap();
    step(&dir, 1);
    assert!(child.wait_with_output().unwrap().status.success());
    upstream.settle();
    let got = upstream.received();
    assert_eq!(got[0]["headers"]["x-rej"], "old-file-value");
    assert_eq!(
        got[1]["headers"]["x-rej"],
        "new-file-value",
        "{}",
        home.log()
    );
}

/// A program that cannot be started exits as a shell would say it: 127
/// not found, 126 found but not executable, with the reason; a broken
/// `--policy` file is a config error (64); no run is left.
#[test]
fn a_program_that_cannot_start_exits_like_a_shell() {
    let home = TestHome::new();
    home.start(&[]);
    for (program, code, reason) in [
        ("/nonexistent/prog", 127, "No such file or directory"),
        ("/etc/passwd", 126, "Permission denied"),
    ] {
        let run = home.run(&["run", "--", program]);
        assert_eq!(run.code, code, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("cannot start {program}: {reason}")),
            "{run:?}"
        );
    }
    // A broken --policy file is a config error (64), naming the file.
    let policy = home.path.parent().unwrap().join("broken-policy.toml");
    std::fs::write(&policy, "bogus = \n").unwrap();
    let broken = home.run(&["run", "--policy", policy.to_str().unwrap(), "--", "true"]);
    assert_eq!(broken.code, 64, "{broken:?}");
    assert!(broken.stderr.contains("broken-policy.toml"), "{broken:?}");
    let (status, runs) = home.http("GET", "/v1/runs", None);
    assert_eq!(status, 200);
    assert_eq!(json(&runs)["runs"], serde_json::json!([]), "{runs}");
    home.run(&["daemon", "stop"]);
}

/// `keyward run --verbose` says each problem while the program still runs
/// (the program waits on its stdin for the test to see the line), counts
/// repeats, and still sums them up at the end. The problems route answers
/// the run's owner (and a bad query clearly), but not the program inside
/// the run.
#[test]
fn keyward_run_verbose_says_each_problem_as_it_happens() {
    use std::io::{BufRead as _, Write as _};
    let (home, _upstream) = setup("");
    let script = format!(
        "curl -s -o /dev/null https://refused.invalid/; read id; \
         curl -sS --unix-socket {} \"http://k/v1/runs/$id/problems?seen=0\"; echo; read go; \
         curl -s -o /dev/null https://refused.invalid/; read go",
        home.socket().display()
    );
    let mut child = home
        .cmd(&[
            "run",
            "--verbose",
            "--grant",
            "local",
            "--network",
            "strict",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Lines up to and including the first that holds `needle`; a bound on
    // the wait only turns a missing line into a failure instead of a hang.
    let mut seen = Vec::new();
    let mut wait_line = |needle: &str| {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {needle:?}; stderr so far: {seen:#?}"));
            seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    };
    let mut stdin = child.stdin.take().unwrap();

    let first = wait_line("keyward run: refused: refused.invalid:443 (network.strict)");
    assert!(!first.contains("times"), "{first}");
    wait_line("keyward run:   fix: keyward run --allow refused.invalid:443");
    // The owner may follow the run too; a bad query is said.
    let (_, runs) = home.http("GET", "/v1/runs", None);
    let id = json(&runs)["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = home.http("GET", &format!("/v1/runs/{id}/problems?seen=0"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["noted"], 1, "{body}");
    let (status, body) = home.http("GET", &format!("/v1/runs/{id}/problems?seen=x"), None);
    assert_eq!(status, 400, "{body}");
    // The program itself asks: refused.
    writeln!(stdin, "{id}").unwrap();
    writeln!(stdin, "go").unwrap();
    wait_line("keyward run: refused: refused.invalid:443 (network.strict), 2 times");
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    wait_line("2 requests did not go as asked");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("run_confined"), "{stdout}");
    assert!(!stdout.contains("noted"), "{stdout}");
}

/// `keyward run` says on its own stderr, once the program is done, which
/// requests did not go as asked and what would change that: a strict-mode
/// refusal (with the `--allow` that admits it), an unreachable upstream,
/// an upstream whose issuer is unknown (naming `proxy.upstream_ca`), and a
/// granted host reached on a port its grant does not cover (sent without
/// the secret). `--quiet` says nothing; the report never holds a secret.
#[test]
fn keyward_run_says_why_requests_did_not_go_as_asked() {
    let (home, upstream) = setup("");
    let config = home.file("keyward.toml");
    let trusted = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{trusted}\n[grants.default-port]\nsecret = \"vault:local-token\"\nhosts = [\"localhost\"]\n\
             inject = {{ header = \"Authorization\" }}\n"
        ),
    )
    .unwrap();
    assert_eq!(home.run(&["daemon", "reload"]).code, 0);
    // Each request's own outcome is curl's business; the run ends with 0.
    let curl = |url: &str| format!("curl -s -o /dev/null {url}; true;");

    let strict = home.run(&[
        "run",
        "--grant",
        "local",
        "--network",
        "strict",
        "--",
        "sh",
        "-c",
        &curl("https://refused.invalid/"),
    ]);
    assert_eq!(strict.code, 0, "{strict:?}");
    for needle in [
        "1 request did not go as asked",
        "refused: refused.invalid:443 (network.strict)",
        "fix: keyward run --allow refused.invalid:443",
    ] {
        assert!(strict.stderr.contains(needle), "{needle}: {strict:?}");
    }

    let port = upstream
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let script = format!(
        "{}{}{}",
        curl(&upstream.url("/no-secret-here")),
        curl(&upstream.url("/again")),
        curl("https://localhost:1/"),
    );
    let permissive = home.run(&["run", "--grant", "default-port", "--", "sh", "-c", &script]);
    assert_eq!(permissive.code, 0, "{permissive:?}");
    for needle in [
        format!("sent without its secret: localhost:{port} (grant default-port), 2 times"),
        format!("fix: add \"localhost:{port}\" to the grant's hosts"),
        "failed: localhost:1 (upstream_unreachable)".to_owned(),
    ] {
        assert!(
            permissive.stderr.contains(&needle),
            "{needle}: {permissive:?}"
        );
    }
    let quiet = home.run(&[
        "run",
        "--quiet",
        "--grant",
        "default-port",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(!quiet.stderr.contains("did not go as asked"), "{quiet:?}");

    // The upstream's issuer unknown: the setting that fixes it is named.
    let untrusted: String = trusted
        .lines()
        .filter(|l| !l.starts_with("upstream_ca"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, untrusted).unwrap();
    assert_eq!(home.run(&["daemon", "reload"]).code, 0);
    let untrusted = run_sh(&home, &["local"], &curl(&upstream.url("/untrusted")));
    assert!(
        untrusted
            .stderr
            .contains(&format!("failed: localhost:{port}"))
            && untrusted.stderr.contains("proxy.upstream_ca"),
        "{untrusted:?}"
    );
    for run in [&strict, &permissive, &untrusted] {
        assert!(!run.stderr.contains(SECRET), "{run:?}");
    }
    upstream.settle();
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r["headers"]["authorization"].is_null()),
        "nothing was injected toward the uncovered port"
    );
}
