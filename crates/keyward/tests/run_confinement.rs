//! What keeps a program inside its run, end to end: forks, setsid and
//! races, leftovers ended with the run, connections passed out, config
//! edits that would widen a live run, the Landlock sandbox, and a wrapper
//! starved of descriptors. Real daemon, real child processes.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::upstream::{SECRET, point_grant_elsewhere, run_sh, setup, use_passphrase_vault};
use common::{TestHome, json, wait_for};

/// `GET /v1/secrets` on the admin socket from a shell command line.
fn secrets_request(home: &TestHome) -> String {
    format!(
        "curl -sS --unix-socket {} http://k/v1/secrets",
        home.socket().display()
    )
}

fn run_count(home: &TestHome) -> usize {
    let (status, body) = home.http("GET", "/v1/runs", None);
    assert_eq!(status, 200, "{body}");
    json(&body)["runs"].as_array().unwrap().len()
}

/// Double fork, `setsid -f`, and a request made in the program's very first
/// instant (the run exists before the program does) are all still inside
/// the run: refused `run_confined`, no secret listed, no run created.
#[test]
fn a_child_cannot_leave_its_run_by_forking_setsid_or_racing() {
    let (home, _upstream) = setup("");
    let out = home.path.parent().unwrap().join("escape.out");
    let create = format!(
        "curl -sS --unix-socket {} -X POST -d '{{\"grants\":[\"local\"]}}' http://k/v1/runs",
        home.socket().display()
    );
    let attempts = [
        format!(
            "setsid -f sh -c \"{} > {}.setsid\"",
            secrets_request(&home),
            out.display()
        ),
        format!(
            "( ( {} > {}.double ) & ) ; true",
            secrets_request(&home),
            out.display()
        ),
        format!(
            "setsid -f sh -c '( ( {create} > {}.create ) & )'",
            out.display()
        ),
    ];
    for script in &attempts {
        let before = run_count(&home);
        let run = run_sh(&home, &[], &format!("{script}; sleep 1"));
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run_count(&home), before, "no run may be created or left");
    }
    for suffix in ["setsid", "double", "create"] {
        let got = std::fs::read_to_string(format!("{}.{suffix}", out.display())).unwrap();
        assert!(got.contains("run_confined"), "{suffix}: {got}");
        assert!(!got.contains("local-token"), "{suffix}: {got}");
    }
    // The program's first instruction already meets a registered run.
    let run = home.run(&[
        "run",
        "--",
        "curl",
        "-sS",
        "--unix-socket",
        home.socket().to_str().unwrap(),
        "http://k/v1/secrets",
    ]);
    assert!(run.stdout.contains("run_confined"), "{run:?}");
}

/// A daemonized grandchild (setsid + double fork) still alive when the
/// program exits is ended before the run is removed: it never reaches the
/// admin API from outside the run.
#[test]
fn what_a_program_leaves_running_is_ended_with_its_run() {
    let (home, _upstream) = setup("");
    let dir = home.path.parent().unwrap();
    let pid_file = dir.join("grandchild.pid");
    let log = dir.join("grandchild.log");
    // The grandchild ignores SIGTERM, so only the SIGKILL that follows the
    // grace period ends it; until then it keeps asking for secrets.
    let grandchild = format!(
        "trap '' TERM; echo $$ > {pid}; while :; do {req} >> {log} 2>&1; echo >> {log}; sleep 0.1; done",
        pid = pid_file.display(),
        req = secrets_request(&home),
        log = log.display(),
    );
    let run = run_sh(
        &home,
        &[],
        &format!(
            "setsid -f sh -c \"( sh -c '{}' & )\"; while [ ! -s {} ]; do sleep 0.05; done",
            grandchild.replace('\'', "'\\''"),
            pid_file.display()
        ),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("keyward run: ended"), "{run:?}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!common::alive(pid), "the grandchild outlived its run");
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("run_confined"), "{seen}");
    assert!(!seen.contains("\"secrets\""), "it listed secrets: {seen}");
}

/// A connection made inside a run and handed (SCM_RIGHTS) to a process
/// outside it, by a helper that then exits, is refused: the daemon checks
/// the process that connected, and one that is gone counts as confined.
#[test]
fn a_connection_passed_out_of_a_run_stays_confined() {
    let (home, _upstream) = setup("");
    let dir = home.path.parent().unwrap();
    let drop_box = dir.join("dropbox.sock");
    // Outside any run: receives a descriptor, waits until the sender is
    // gone, then asks for the secrets on it.
    let receiver = format!(
        r#"
import socket, array, os, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("{drop}"); srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
msg, anc, _, _ = conn.recvmsg(16, socket.CMSG_LEN(4))
sender = int(msg.decode())
fd = array.array("i", anc[0][2][:4])[0]
while os.path.exists(f"/proc/{{sender}}"):
    time.sleep(0.02)
s = socket.socket(fileno=fd)
s.sendall(b"GET /v1/secrets HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n")
print(s.recv(65536).decode(errors="replace"), flush=True)
"#,
        drop = drop_box.display()
    );
    let mut outside = Command::new("python3")
        .args(["-c", &receiver])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(outside.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let sender = format!(
        r#"
import socket, array, os
admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
admin.connect("{admin}")
out = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
out.connect("{drop}")
out.sendmsg([str(os.getpid()).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [admin.fileno()]))])
"#,
        admin = home.socket().display(),
        drop = drop_box.display()
    );
    let run = home.run(&["run", "--", "python3", "-c", &sender]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut answer).unwrap();
    outside.wait().unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("run_confined"), "{answer}");
}

/// A confined `keyward grant add` is refused before it touches the config.
#[test]
fn a_confined_grant_add_changes_no_file() {
    let (home, _upstream) = setup("");
    let before = std::fs::read(home.file("keyward.toml")).unwrap();
    let run = home.run(&[
        "run",
        "--",
        common::BIN,
        "grant",
        "add",
        "evil",
        "--secret",
        "vault:local-token",
        "--host",
        "evil.example",
        "--header",
        "Authorization",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("run_confined"), "{run:?}");
    assert_eq!(std::fs::read(home.file("keyward.toml")).unwrap(), before);
}

/// The child edits the config to send its grant to a host it controls and
/// reloads: its own SIGHUP cannot reach the daemon, and even when the
/// owner reloads, the live run keeps the hosts it started with (a new run
/// gets the new config). A removed grant is taken away at once. Both with
/// a key-file and a passphrase vault.
#[test]
fn a_config_edit_and_reload_never_widen_a_live_run() {
    for passphrase in [false, true] {
        let (home, upstream) = setup("");
        if passphrase {
            use_passphrase_vault(&home);
        }
        // The grant starts pointed at a host nobody serves.
        let (config, original) = point_grant_elsewhere(&home);
        let dir = home.path.parent().unwrap();
        let (edited, reloaded) = (dir.join("edited"), dir.join("reloaded"));
        let daemon = home.pid_in_file().unwrap();
        let script = format!(
            "sed -i 's/nowhere.invalid/localhost/' {config}; kill -HUP {daemon} 2>/dev/null && echo SIGHUP-DELIVERED; \
             : > {edited}; while [ ! -e {reloaded} ]; do sleep 0.05; done; \
             curl -sS -o /dev/null {url}",
            config = config.display(),
            edited = edited.display(),
            reloaded = reloaded.display(),
            url = upstream.url("/widened"),
        );
        let child = home
            .cmd(&["run", "--grant", "local", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_for(Duration::from_secs(30), || edited.exists()));
        assert_eq!(home.http("POST", "/v1/reload", None).0, 200, "owner reload");
        std::fs::write(&reloaded, "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("SIGHUP-DELIVERED"));
        upstream.settle();
        let widened = upstream.received();
        assert_eq!(widened.len(), 1, "{widened:?}");
        assert!(
            !widened[0].to_string().contains(SECRET),
            "widened: {widened:?}"
        );
        // A new run gets the new config.
        let run = run_sh(
            &home,
            &["local"],
            &format!("curl -sS -o /dev/null {}", upstream.url("/new")),
        );
        assert_eq!(run.code, 0, "{run:?}");
        upstream.settle();
        let got = upstream.received();
        assert_eq!(
            got[1]["headers"]["authorization"],
            format!("Bearer {SECRET}"),
            "passphrase={passphrase}"
        );

        // Narrowing: a grant removed from the config is gone for a live run.
        let (removed, done) = (dir.join("removed"), dir.join("after-removal"));
        let script = format!(
            "curl -sS -o /dev/null {before}; : > {ready}; while [ ! -e {done} ]; do sleep 0.05; done; curl -sS -o /dev/null {after}",
            before = upstream.url("/before-removal"),
            after = upstream.url("/after-removal"),
            ready = removed.display(),
            done = done.display(),
        );
        let child = home
            .cmd(&["run", "--grant", "local", "--", "sh", "-c", &script])
            .spawn()
            .unwrap();
        assert!(wait_for(Duration::from_secs(30), || removed.exists()));
        std::fs::write(
            &config,
            original.replace("[grants.local]", "[grants.unused]"),
        )
        .unwrap();
        assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
        std::fs::write(&done, "").unwrap();
        assert!(child.wait_with_output().unwrap().status.success());
        upstream.settle();
        let got = upstream.received();
        let by_path = |p: &str| got.iter().find(|r| r["path"] == p).unwrap().to_string();
        assert!(by_path("/before-removal").contains(SECRET));
        assert!(
            !by_path("/after-removal").contains(SECRET),
            "removal did not narrow"
        );
    }
}

/// `keyward run --sandbox`: the proxy is the only TCP way out, keyward's
/// files are out of reach, the daemon cannot be signalled; the work still
/// gets done (curl through the proxy with injection, a writable working
/// directory and temporary directory).
#[test]
fn a_sandboxed_run_reaches_only_the_proxy_and_its_own_files() {
    if keyward_sys::landlock_abi() < 6 {
        eprintln!("Landlock ABI 6 not available; skipped");
        return;
    }
    let (home, upstream) = setup("");
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let daemon = home.pid_in_file().unwrap();
    let script = format!(
        r#"python3 -c '
import socket
s = socket.socket()
try:
    s.connect(("127.0.0.1", {port})); print("RAW-TCP-CONNECTED")
except OSError as e:
    print("raw tcp:", e.errno)
'
cat {config} >/dev/null 2>&1 && echo CONFIG-READ
ls {vault} >/dev/null 2>&1 && echo VAULT-LISTED
kill -HUP {daemon} 2>/dev/null && echo DAEMON-SIGNALLED
ls /dev/pts >/dev/null 2>&1 && echo PTS-LISTED
cat /dev/ptmx >/dev/null 2>&1 && echo PTMX-OPENED
echo ok > written && echo CWD-WRITABLE
echo ok > "$TMPDIR/t" && echo TMP-WRITABLE
curl -sS {url}
"#,
        port = upstream.port,
        config = home.file("keyward.toml").display(),
        vault = home.file("vault").display(),
        url = upstream.url("/sandboxed"),
    );
    let run = home
        .cmd(&[
            "run",
            "--sandbox",
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(&work)
        .output()
        .map(common::Run::from)
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("sandbox: landlock ABI"), "{run:?}");
    assert!(run.stderr.contains("fs, tcp, signals"), "{run:?}");
    assert!(
        run.stdout.contains("raw tcp: 13"),
        "EACCES expected: {run:?}"
    );
    for leak in [
        "RAW-TCP-CONNECTED",
        "CONFIG-READ",
        "VAULT-LISTED",
        "DAEMON-SIGNALLED",
    ] {
        assert!(!run.stdout.contains(leak), "{leak}: {run:?}");
    }
    assert!(
        run.stdout.contains("CWD-WRITABLE") && run.stdout.contains("TMP-WRITABLE"),
        "{run:?}"
    );
    assert!(work.join("written").exists());
    upstream.settle();
    let got = upstream.received();
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    let (_, runs) = home.http("GET", "/v1/runs", None);
    assert!(!runs.contains("sandboxed"), "the run is gone: {runs}");

    // Paths under the home, or holding it, are refused before anything runs.
    for (flag, path) in [
        ("--sandbox-allow-read", home.file("vault")),
        (
            "--sandbox-allow-write",
            home.path.parent().unwrap().to_owned(),
        ),
    ] {
        let run = home
            .cmd(&[
                "run",
                "--sandbox",
                flag,
                path.to_str().unwrap(),
                "--",
                "true",
            ])
            .current_dir(&work)
            .output()
            .map(common::Run::from)
            .unwrap();
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("never reaches keyward's own files"),
            "{run:?}"
        );
    }
    let run = home
        .cmd(&[
            "run",
            "--sandbox",
            "--sandbox-profile",
            "nope",
            "--",
            "true",
        ])
        .current_dir(&work)
        .output()
        .map(common::Run::from)
        .unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no sandbox profile named \"nope\""),
        "{run:?}"
    );
    let run = home.run(&["run", "--sandbox-profile", "x", "--", "true"]);
    assert_eq!(run.code, 2, "needs --sandbox: {run:?}");
}

/// A leftover that keeps forking (each parent exits at once, so every
/// listing finds a fresh orphan or a zombie) and ignores SIGTERM is still
/// ended before the run goes; and a daemon that `keyward run` itself
/// started is not taken for a leftover.
#[test]
fn a_fork_hopping_leftover_is_ended_and_the_daemon_is_spared() {
    let home = TestHome::new();
    let dir = home.path.parent().unwrap().to_owned();
    let log = dir.join("hopper.log");
    let hopper = format!(
        r#"
import os, signal, socket, time, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork(): sys.exit(0)
end = time.time() + 4
while time.time() < end:
    if os.fork(): os._exit(0)
s = socket.socket(socket.AF_UNIX)
s.connect("{sock}")
s.sendall(b"GET /v1/secrets HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n")
open("{log}", "w").write(f"ppid={{os.getppid()}} " + s.recv(4096).decode(errors="replace"))
"#,
        sock = home.socket().display(),
        log = log.display()
    );
    // No daemon yet: this run starts it.
    let run = home.run(&["run", "--", "python3", "-c", &hopper]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("ended"), "{run:?}");
    std::thread::sleep(Duration::from_secs(5));
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!seen.contains("\"secrets\""), "the hopper escaped: {seen}");
    assert!(seen.is_empty() || seen.contains("run_confined"), "{seen}");
    assert_eq!(home.run(&["status"]).code, 0, "the daemon outlived the run");
}

/// A wrapper starved of descriptors (its open-file limit lowered from
/// outside: the run's own program may no longer change it, which it tries
/// here) while a process the program left is about to ask the admin API:
/// the wrapper cannot list what is left, so it keeps the run open until the
/// kernel reports no child, and the leftover never reaches the admin API
/// from outside a run.
#[test]
fn a_wrapper_starved_of_descriptors_keeps_the_run_open() {
    let (home, _upstream) = setup("");
    let files = tempfile::tempdir().unwrap();
    let (out, program, go) = (
        files.path().join("starved.out"),
        files.path().join("program.pid"),
        files.path().join("go"),
    );
    let script = format!(
        "setsid -f sh -c 'while [ ! -e {go} ]; do sleep 0.05; done; {req} > {out}.part 2>&1; mv {out}.part {out}'; \
         prlimit --pid $PPID --nofile=10:10 2>/dev/null && echo self-starved; \
         echo $$ > {program}; while [ ! -e {go} ]; do sleep 0.05; done; exit 0",
        req = secrets_request(&home),
        out = out.display(),
        program = program.display(),
        go = go.display(),
    );
    let wrapper = home
        .cmd(&["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&program).is_ok_and(|p| p.ends_with('\n'))
    }));
    let starve = Command::new("prlimit")
        .args(["--pid", &wrapper.id().to_string(), "--nofile=10:10"])
        .status()
        .unwrap();
    assert!(starve.success());
    std::fs::write(&go, "").unwrap();
    assert!(wait_for(Duration::from_secs(30), || out.exists()));
    let got = std::fs::read_to_string(&out).unwrap();
    assert!(got.contains("run_confined"), "{got}");
    assert!(!got.contains("\"secrets\""), "{got}");
    let run = wrapper.wait_with_output().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(
        !String::from_utf8_lossy(&run.stdout).contains("self-starved"),
        "the program changed its wrapper's limits: {run:?}"
    );
}
