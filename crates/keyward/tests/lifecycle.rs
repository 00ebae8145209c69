//! Daemon lifecycle, driven through the real binary in temporary homes.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::Stdio;
use std::time::Duration;

use common::{TestHome, alive, json, signal, wait_for};

#[test]
fn start_status_stop() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    assert!(alive(pid));
    assert_eq!(home.pid_in_file(), Some(pid));

    let run = home.run(&["status", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = json(&run.stdout);
    assert_eq!(v["running"], true);
    assert_eq!(v["pid"], pid);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    for key in ["commit", "started_at", "uptime_s", "socket", "home"] {
        assert!(!v[key].is_null(), "status --json lacks {key}: {v}");
    }
    assert_eq!(v["socket"], home.socket().to_str().unwrap());

    let text = home.run(&["status"]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains(&format!("pid:        {pid}")),
        "{}",
        text.stdout
    );

    let run = home.run(&["daemon", "stop"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("stopped (pid {pid})")),
        "{run:?}"
    );
    assert!(!alive(pid));
    assert!(!home.socket().exists(), "socket left behind");
    assert!(!home.pid_file().exists(), "PID file left behind");

    let run = home.run(&["status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("not running"), "{run:?}");

    let run = home.run(&["daemon", "stop"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("not running"), "{run:?}");
}

#[test]
fn home_is_private_and_socket_is_0600() {
    let home = TestHome::new();
    home.start(&[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.path), 0o700);
    assert_eq!(mode(&home.socket()), 0o600);
    assert_eq!(mode(&home.pid_file()), 0o600);
    assert_eq!(mode(&home.file("daemon.log")), 0o600);
}

#[test]
fn foreground_start_notifies_readiness_and_sigterm_cleans_up() {
    let home = TestHome::new();
    let notify_dir = tempfile::tempdir_in("/tmp").unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let child = home
        .cmd(&["daemon", "start"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", child.id())), "{msg}");

    // Ready means answering: no retry needed.
    let (status, body) = home.http("GET", "/v1/health", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["pid"], child.id());

    signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(!home.socket().exists(), "socket left behind");
    assert!(!home.pid_file().exists(), "PID file left behind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopping: SIGTERM"), "{stderr}");
}

#[test]
fn sigint_also_stops_cleanly() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    signal(pid, "INT");
    assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
    assert!(!home.socket().exists());
    assert!(!home.pid_file().exists());
    assert!(home.log().contains("stopping: SIGINT"), "{}", home.log());
}

#[test]
fn racing_detached_starts_one_wins_the_other_says_already_running() {
    let home = TestHome::new();
    let spawn = || {
        home.cmd(&["daemon", "start", "--detach"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    let winner = codes.iter().position(|c| *c == 0).expect("one start won");
    let loser = &outs[1 - winner];
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(codes[1 - winner], 1, "{stderr}");
    // Whether the loser came second or lost the race inside start-up, it
    // names the winner, and never shows the winner's log as its failure.
    let pid = home.pid_in_file().expect("the winner holds the PID file");
    assert!(
        stderr.contains(&format!(
            "a keyward daemon already runs for this home (pid {pid},"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("exited during start-up"), "{stderr}");
    assert!(!stderr.contains("daemon ready"), "{stderr}");
}

#[test]
fn second_start_fails_and_clobbers_nothing() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    let expected = format!(
        "a keyward daemon already runs for this home (pid {pid}, socket {})",
        home.socket().display()
    );

    let run = home.run(&["daemon", "start"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&expected), "{run:?}");

    let run = home.run(&["daemon", "start", "--detach"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&expected), "{run:?}");

    assert_eq!(home.pid_in_file(), Some(pid));
    let (status, body) = home.http("GET", "/v1/health", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["pid"], pid);
}

/// A pid that is certainly not running: a child we started and reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn stale_pid_file_is_reported_then_replaced() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let dead = dead_pid();
    std::fs::write(home.pid_file(), format!("{dead}\n")).unwrap();

    let run = home.run(&["status", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let v = json(&run.stdout);
    assert_eq!(v["running"], false);
    assert_eq!(v["stale_pid_file"], true);
    assert_eq!(v["stale_pid"], dead);
    let run = home.run(&["status"]);
    assert!(run.stdout.contains("stale PID file"), "{run:?}");

    // A stale file never makes `stop` signal anything.
    let run = home.run(&["daemon", "stop"]);
    assert_eq!(run.code, 3, "{run:?}");

    let pid = home.start(&[]);
    assert_eq!(home.pid_in_file(), Some(pid));
    let log = home.log();
    assert!(
        log.contains(&format!("replaced a stale PID file left by pid {dead}")),
        "{log}"
    );
}

#[test]
fn killed_daemon_leaves_stale_socket_that_next_start_recovers() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    signal(pid, "KILL");
    assert!(wait_for(Duration::from_secs(10), || !alive(pid)));
    assert!(home.socket().exists(), "SIGKILL cannot clean up");
    // Until the kernel has closed the dead daemon's descriptors, a connect
    // can still land in its listen queue ("connection error"): the state
    // under test is the one after that.
    assert!(wait_for(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(home.socket()).is_err()
    }));

    let run = home.run(&["status", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let v = json(&run.stdout);
    assert_eq!(v["stale_socket"], true);
    assert_eq!(v["stale_pid_file"], true);
    let text = home.run(&["status"]);
    assert!(text.stdout.contains("stale socket"), "{text:?}");

    let new_pid = home.start(&[]);
    assert_ne!(new_pid, pid);
    assert!(
        home.log().contains("removing a stale socket"),
        "{}",
        home.log()
    );
    assert_eq!(home.run(&["status"]).code, 0);
}

#[test]
fn a_live_socket_is_never_removed() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    // Something else answers on the socket path while the PID file is free.
    let listener = UnixListener::bind(home.socket()).unwrap();
    let run = home.run(&["daemon", "start"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("refusing to remove a live socket"),
        "{run:?}"
    );
    let meta = std::fs::symlink_metadata(home.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert!(
        !home.pid_file().exists(),
        "the failed start must release its PID file"
    );
    drop(listener);
}

#[test]
fn detached_start_that_dies_shows_the_log_tail() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.socket(), "not a socket").unwrap();
    let run = home.run(&["daemon", "start", "--detach"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("exited during start-up"), "{run:?}");
    assert!(run.stderr.contains("is not a socket"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(home.socket()).unwrap(),
        "not a socket"
    );
}

#[test]
fn stop_times_out_on_a_stuck_daemon_and_force_kills_it() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    signal(pid, "STOP");
    let run = home.run(&["daemon", "stop", "--timeout", "300ms"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("did not exit within"), "{run:?}");
    assert!(run.stderr.contains("--force"), "{run:?}");
    assert!(alive(pid));

    let run = home.run(&["daemon", "stop", "--timeout", "300ms", "--force"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("killed (pid {pid})")),
        "{run:?}"
    );
    assert!(!alive(pid));
    assert!(!home.socket().exists());
    assert!(!home.pid_file().exists());
    assert_eq!(home.run(&["status"]).code, 3);
}

#[test]
fn restart_replaces_the_daemon_and_starts_one_when_none_runs() {
    let home = TestHome::new();
    let run = home.run(&["daemon", "restart"]);
    assert_eq!(run.code, 0, "{run:?}");
    let first = home.pid_in_file().unwrap();
    let run = home.run(&["daemon", "restart"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("stopped (pid {first})")),
        "{run:?}"
    );
    let second = home.pid_in_file().unwrap();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(home.run(&["status"]).code, 0);
}

#[test]
fn idle_exit_stops_a_daemon_nobody_uses() {
    let home = TestHome::new();
    let pid = home.start(&["--idle-exit", "1s"]);
    assert!(
        wait_for(Duration::from_secs(15), || !alive(pid)),
        "daemon still alive after idle exit"
    );
    assert!(
        home.log().contains("stopping: idle for 1s"),
        "{}",
        home.log()
    );
    assert!(!home.socket().exists());
    assert!(!home.pid_file().exists());
}

#[test]
fn idle_exit_from_config_and_zero_turns_it_off() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), "[daemon]\nidle_exit = \"1s\"\n").unwrap();
    // The flag wins over the config: 0 means never.
    let pid = home.start(&["--idle-exit", "0"]);
    std::thread::sleep(Duration::from_millis(1800));
    assert!(alive(pid), "idle exit fired although --idle-exit 0");
    home.run(&["daemon", "stop"]);

    let pid = home.start(&[]);
    assert!(wait_for(Duration::from_secs(15), || !alive(pid)));
}

#[test]
fn sighup_reloads_good_config_and_keeps_old_on_bad() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let config = home.file("keyward.toml");
    std::fs::write(&config, "[daemon]\nlog_level = \"info\"\n").unwrap();
    let pid = home.start(&[]);

    // Debug lines for admin requests appear only after the reload.
    home.http("GET", "/v1/health", None);
    assert!(!home.log().contains("admin request"));
    std::fs::write(&config, "[daemon]\nlog_level = \"debug\"\n").unwrap();
    signal(pid, "HUP");
    assert!(wait_for(Duration::from_secs(10), || home
        .log()
        .contains("config reloaded")));
    home.http("GET", "/v1/health", None);
    assert!(
        wait_for(Duration::from_secs(15), || home
            .log()
            .contains("admin request")),
        "{}",
        home.log()
    );

    std::fs::write(&config, "[daemon]\nlog_levle = \"warn\"\n").unwrap();
    signal(pid, "HUP");
    assert!(wait_for(Duration::from_secs(10), || home
        .log()
        .contains("config reload failed, keeping the previous config")));
    let log = home.log();
    assert!(log.contains("log_levle"), "{log}");
    assert!(alive(pid));
    let (status, _) = home.http("GET", "/v1/health", None);
    assert_eq!(status, 200);
    // Still on the debug filter of the last good config.
    let before = home.log().matches("admin request").count();
    home.http("GET", "/v1/health", None);
    assert!(wait_for(Duration::from_secs(15), || home
        .log()
        .matches("admin request")
        .count()
        > before));
}

#[test]
fn long_socket_path_is_a_clear_usage_error() {
    let home = TestHome::new();
    let deep = home.path.join("d".repeat(100));
    for args in [
        &["daemon", "start"][..],
        &["daemon", "start", "--detach"][..],
        &["status"][..],
    ] {
        let run = home.cmd(args).env("KEYWARD_HOME", &deep).output().unwrap();
        let run = common::Run::from(run);
        assert_eq!(run.code, 64, "{args:?}: {run:?}");
        assert!(run.stderr.contains("107-byte limit"), "{run:?}");
        assert!(run.stderr.contains(deep.to_str().unwrap()), "{run:?}");
    }
    assert!(!deep.exists(), "nothing is created for an unusable home");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_and_idle_keepalives_do_not_delay() {
    use std::io::{Read, Write};
    let home = TestHome::new();
    let pid = home.start(&[]);

    // An idle keep-alive connection must not hold the stop up.
    let mut idle = std::os::unix::net::UnixStream::connect(home.socket()).unwrap();
    write!(idle, "GET /v1/health HTTP/1.1\r\nhost: k\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // An in-flight request: headers sent, body only half, to a route whose
    // handler reads the body.
    let body = r#"{"reason":"drain"}"#;
    let mut busy = std::os::unix::net::UnixStream::connect(home.socket()).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        busy,
        "POST /v1/shutdown HTTP/1.1\r\nhost: k\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    signal(pid, "TERM");
    assert!(wait_for(Duration::from_secs(15), || !home
        .socket()
        .exists()));
    assert!(alive(pid), "the daemon must wait for the in-flight request");
    busy.write_all(&body.as_bytes()[5..]).unwrap();
    let mut resp = String::new();
    busy.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(wait_for(Duration::from_secs(15), || !alive(pid)));
    assert!(!home.pid_file().exists());
}

#[test]
fn drain_gives_up_after_ten_seconds() {
    use std::io::Write;
    let home = TestHome::new();
    let pid = home.start(&[]);
    let mut stuck = std::os::unix::net::UnixStream::connect(home.socket()).unwrap();
    write!(
        stuck,
        "POST /v1/shutdown HTTP/1.1\r\nhost: k\r\ncontent-length: 100\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    signal(pid, "TERM");
    assert!(
        wait_for(Duration::from_secs(20), || !alive(pid)),
        "the drain must end within 10 s"
    );
    assert!(
        home.log().contains("did not finish within 10s"),
        "{}",
        home.log()
    );
    assert!(!home.pid_file().exists());
    drop(stuck);
}

#[test]
fn json_log_format_reaches_daemon_log() {
    let home = TestHome::new();
    let run = home.run(&["--log-format", "json", "daemon", "start", "--detach"]);
    assert_eq!(run.code, 0, "{run:?}");
    home.run(&["daemon", "stop"]);
    let log = home.log();
    let lines: Vec<serde_json::Value> = log.lines().map(json).collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "keyward daemon ready"),
        "{log}"
    );
}

#[test]
fn daemon_log_rotates_at_its_limit_and_keeps_one_old_file() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        "[daemon]\nlog_max_bytes = 4096\n",
    )
    .unwrap();
    let log = home.file("daemon.log");
    let old = home.file("daemon.log.1");
    let append = |text: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append(&"first-filler\n".repeat(400));
    home.start(&[]);
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&old)
            .is_ok_and(|t| t.contains("keyward daemon ready"))),
        "no rotation: {:?}",
        std::fs::read_dir(&home.path).unwrap().collect::<Vec<_>>()
    );
    let before = std::fs::read_to_string(&old).unwrap();
    assert!(
        before.starts_with("first-filler\n"),
        "old lines kept in order"
    );
    // The rotation's own line is the first in the new file.
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .contains("daemon.log reached 4096 bytes")),
        "{}",
        home.log()
    );
    assert!(!home.log().contains("first-filler"), "{}", home.log());
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The daemon writes to the new file; the next rotation replaces the old one.
    append(&"second-filler\n".repeat(400));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&old)
            .is_ok_and(|t| t.contains("second-filler"))),
        "no second rotation"
    );
    assert!(
        !std::fs::read_to_string(&old)
            .unwrap()
            .contains("first-filler")
    );
    assert_eq!(home.run(&["daemon", "stop"]).code, 0);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("keyward daemon stopped"),
        "{}",
        home.log()
    );
}

/// Every command that needs the daemon starts it (`secret list`, `grant
/// list`, `vault status`, `vault history`); one that only reads the home
/// (`ca path`) does not, and `vault seal` with no daemon says there is
/// nothing to seal instead of starting one.
#[test]
fn commands_that_need_the_daemon_start_it_and_others_do_not() {
    let home = TestHome::new();
    let path = home.run(&["ca", "path"]);
    assert_eq!(path.code, 0, "{path:?}");
    assert!(path.stdout.contains("ca.pem"), "{path:?}");
    let seal = home.run(&["vault", "seal"]);
    assert_eq!(seal.code, 0, "{seal:?}");
    assert!(seal.stdout.contains("nothing to seal"), "{seal:?}");
    assert_eq!(home.run(&["status"]).code, 3, "neither started the daemon");
    for args in [
        &["secret", "list"][..],
        &["grant", "list"],
        &["vault", "status"],
        &["vault", "history"],
    ] {
        let run = home.run(args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert_eq!(home.run(&["status"]).code, 0, "{args:?} started it");
        assert_eq!(home.run(&["daemon", "stop"]).code, 0);
    }
}
