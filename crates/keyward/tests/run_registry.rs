//! The run registry under load, against a real daemon: what a run holds
//! (a pidfd watching its process) is given back when the run goes, and a
//! registration or removal the API acknowledged survives the daemon being
//! killed.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{TestHome, json, wait_for};

/// The daemon's open pidfds.
fn pidfds(daemon: u32) -> usize {
    std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:[pidfd]")
        })
        .count()
}

/// A process of ours that a run may be tied to.
fn sleeper() -> Child {
    Command::new("sleep").arg("300").spawn().unwrap()
}

fn register(home: &TestHome, pid: Option<u32>) -> String {
    let body = match pid {
        Some(pid) => format!("{{\"pid\":{pid}}}"),
        None => "{}".to_owned(),
    };
    let (status, body) = home.http("POST", "/v1/runs", Some(&body));
    assert_eq!(status, 200, "{body}");
    json(&body)["run_id"].as_str().unwrap().to_owned()
}

/// Runs removed over the API while their processes live give back the
/// pidfd each one's exit watcher held (before, each removal left one
/// behind until its process exited: a client registering and removing
/// runs on long-lived processes could take every descriptor the daemon
/// has). The processes exiting afterwards disturbs nothing.
#[test]
fn removing_runs_on_live_processes_leaves_no_pidfd_behind() {
    const RUNS: usize = 50;
    let home = TestHome::new();
    let daemon = home.start(&[]);
    // Each admin connection holds its peer's pidfd while it is open: wait
    // for the counts to settle, not for an instant.
    let settles_at = |n: usize| wait_for(Duration::from_secs(10), || pidfds(daemon) == n);
    assert!(
        settles_at(0),
        "an idle daemon holds {} pidfds",
        pidfds(daemon)
    );
    let mut children: Vec<Child> = (0..RUNS).map(|_| sleeper()).collect();
    let ids: Vec<String> = children
        .iter()
        .map(|c| register(&home, Some(c.id())))
        .collect();
    // Each run's process is watched through a pidfd of its own.
    assert!(
        settles_at(RUNS),
        "{} pidfds for {RUNS} runs",
        pidfds(daemon)
    );

    // A run whose pid changes keeps one watcher, not two.
    let mut replacement = sleeper();
    let (status, body) = home.http(
        "PATCH",
        &format!("/v1/runs/{}", ids[0]),
        Some(&format!("{{\"pid\":{}}}", replacement.id())),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        settles_at(RUNS),
        "{} pidfds for {RUNS} runs",
        pidfds(daemon)
    );

    for id in &ids {
        let (status, body) = home.http("DELETE", &format!("/v1/runs/{id}"), None);
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        settles_at(0),
        "the daemon still holds {} pidfds of removed runs",
        pidfds(daemon)
    );

    // The processes exit: nothing is left to reap, and the daemon serves
    // new runs (watched again) as before.
    for child in children.iter_mut().chain([&mut replacement]) {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut next = sleeper();
    let id = register(&home, Some(next.id()));
    assert!(settles_at(1), "{} pidfds for one run", pidfds(daemon));
    next.kill().unwrap();
    next.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || home
            .http("GET", &format!("/v1/runs/{id}"), None)
            .0
            == 404),
        "a run whose process exited is reaped"
    );
    assert!(settles_at(0), "{} pidfds for no run", pidfds(daemon));
    assert_eq!(home.http("GET", "/v1/runs", None).1, "{\"runs\":[]}");
    assert!(!home.log().contains("ERROR"), "{}", home.log());
}

/// Whether the proxy knows `token`: a forward request to a closed
/// loopback port is answered 502 for a live run, 407 for an unknown token.
fn proxy_knows(home: &TestHome, token: &str) -> bool {
    let port = std::fs::read_to_string(home.file("proxy.port")).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x"])
        .arg(format!("http://run:{token}@127.0.0.1:{}", port.trim()))
        .arg("http://127.0.0.1:1/")
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code == "407" || code == "502", "{code}");
    code == "502"
}

/// What the API acknowledged is on disk the moment it answers: after a
/// `kill -9` (no clean shutdown, no later write) a restarted daemon knows
/// every registered run by its token, and a removed run's token stays
/// revoked.
#[test]
fn acknowledged_registrations_and_removals_survive_kill_9() {
    let home = TestHome::new();
    let daemon = home.start(&[]);
    let mut made = Vec::new();
    for _ in 0..20 {
        let (status, body) = home.http("POST", "/v1/runs", Some("{}"));
        assert_eq!(status, 200, "{body}");
        let created = json(&body);
        made.push((
            created["run_id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        ));
    }
    let (removed, removed_token) = made.remove(7);
    let (status, body) = home.http("DELETE", &format!("/v1/runs/{removed}"), None);
    assert_eq!(status, 200, "{body}");
    common::signal(daemon, "KILL");
    assert!(wait_for(Duration::from_secs(10), || !common::alive(daemon)));

    home.start(&[]);
    for (id, token) in &made {
        let (status, body) = home.http("GET", &format!("/v1/runs/{id}"), None);
        assert_eq!(status, 200, "{id} was lost: {body}");
        assert!(proxy_knows(&home, token), "{id}'s token was lost");
    }
    assert_eq!(
        home.http("GET", &format!("/v1/runs/{removed}"), None).0,
        404,
        "a removed run came back"
    );
    assert!(!proxy_knows(&home, &removed_token));
}

/// A run's private directory is accepted only as keyward makes it: named
/// `keyward-run-<12 hex>`, the caller's, and at a path with no link in it
/// (a link there, swapped later, would point the daemon's removal at
/// another directory). The one accepted is removed when its run ends.
#[test]
fn a_private_tmp_is_accepted_only_at_a_path_without_links() {
    let home = TestHome::new();
    home.start(&[]);
    let base = tempfile::tempdir().unwrap();
    let real = base.path().canonicalize().unwrap().join("real");
    let dir = real.join("keyward-run-0123456789ab");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&real, base.path().join("link")).unwrap();
    let register = |private_tmp: &std::path::Path, pid: u32| {
        let body = serde_json::json!({"pid": pid, "private_tmp": private_tmp}).to_string();
        home.http("POST", "/v1/runs", Some(&body))
    };
    let mut child = sleeper();
    let via_link = base
        .path()
        .canonicalize()
        .unwrap()
        .join("link/keyward-run-0123456789ab");
    let (status, body) = register(&via_link, child.id());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("private_tmp"), "{body}");
    let (status, body) = register(&dir, child.id());
    assert_eq!(status, 200, "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !dir.exists()),
        "removed when the run ended"
    );
    assert!(real.exists() && base.path().join("link").exists());
    home.run(&["daemon", "stop"]);
}
