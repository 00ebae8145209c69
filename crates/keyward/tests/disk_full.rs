//! A full disk, for real: the home sits on a small tmpfs that a filler file
//! fills to the last byte. Writes fail with a clear error and nothing that
//! was acknowledged is lost or corrupted; once space is back, everything
//! works again.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Run, TestHome, json, on_small_tmpfs, wait_for};

const SECRET: &str = "kw-disk-full-SECRET-7d2e91";

/// Writes to `path` until the filesystem is full; asserts it was `ENOSPC`.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = [0u8; 4096];
    let err = loop {
        if let Err(e) = file.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn eval(home: &TestHome) -> Run {
    home.run(&[
        "eval",
        "--action",
        "read_file",
        "--target",
        "src/main.rs",
        "--json",
    ])
}

/// A plain-HTTP upstream on loopback that counts the requests it gets.
fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
            );
        }
    });
    (url, count)
}

/// `curl -D -` through the proxy: the response head.
fn fetch(proxy_url: &str, url: &str) -> Run {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-x", proxy_url, url])
        .output()
        .unwrap();
    Run::from(out)
}

/// The seq in a `keyward-evidence://<log_id>/<seq>` reference.
fn seq_of(decision: &serde_json::Value) -> u64 {
    let reference = decision["evidence_refs"][0].as_str().unwrap();
    reference.rsplit('/').next().unwrap().parse().unwrap()
}

#[test]
fn a_full_disk_fails_writes_clearly_and_loses_nothing() {
    let Some(mount) = on_small_tmpfs("a_full_disk_fails_writes_clearly_and_loses_nothing", "4m")
    else {
        return;
    };
    let home = TestHome::in_dir(&mount);
    let filler = mount.join("filler");
    assert_eq!(home.run_stdin(&["secret", "set", "alpha"], SECRET).code, 0);
    let first = eval(&home);
    assert_eq!(first.code, 0, "{first:?}");
    let mut acknowledged = vec![seq_of(&json(&first.stdout))];
    // A run made while there is space; its child's requests come later.
    let (status, body) = home.http("POST", "/v1/runs", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let proxy_url = json(&body)["proxy_url"].as_str().unwrap().to_owned();
    let (url, upstream) = counting_upstream();

    fill(&filler);

    // A secret write fails, says why, and leaves no partial snapshot.
    let vault = home.file("vault");
    let before = names(&vault);
    let set = home.run_stdin(&["secret", "set", "beta"], "another-value");
    assert_eq!(set.code, 1, "{set:?}");
    assert!(
        set.stderr.contains("No space left on device") && set.stderr.contains("snapshot"),
        "{set:?}"
    );
    assert_eq!(names(&vault), before, "the vault directory is unchanged");
    let list = home.run(&["secret", "list"]);
    assert!(
        list.stdout.contains("alpha") && !list.stdout.contains("beta"),
        "the daemon does not claim what is not on disk: {list:?}"
    );

    // Decisions go on until the last page of the segment is full, then
    // are refused (never given unrecorded), each refusal saying why.
    let refused = loop {
        let run = eval(&home);
        if run.code != 0 {
            break run;
        }
        acknowledged.push(seq_of(&json(&run.stdout)));
        assert!(acknowledged.len() < 500, "the disk never filled up");
    };
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("could not be recorded")
            && refused.stderr.contains("No space left on device"),
        "{refused:?}"
    );
    assert!(
        refused.stdout.is_empty(),
        "no decision is printed: {refused:?}"
    );
    let status = home.run(&["status"]);
    assert!(
        status.stdout.contains("evidence:   CANNOT WRITE")
            && status.stdout.contains("No space left on device"),
        "{status:?}"
    );

    // Nor does the proxy send a request it cannot record: an agent that
    // fills the disk does not get to act off the record. No new run
    // starts either (its creation cannot be recorded).
    let fetched = fetch(&proxy_url, &url);
    assert!(
        fetched.stdout.starts_with("HTTP/1.1 503")
            && fetched
                .stdout
                .contains("x-keyward-blocked: evidence_unavailable"),
        "{fetched:?}"
    );
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let run = home.run(&["run", "--", "sh", "-c", "echo child ran"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("could not be recorded")
            && run.stderr.contains("No space left on device"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("child ran"), "{run:?}");

    // Space comes back: everything works again, nothing was lost. The log
    // looks for space by itself, so not even the next proxy request is
    // refused.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .contains("there is space again")),
        "{}",
        home.log()
    );
    let status = home.run(&["status"]);
    assert!(status.stdout.contains("evidence:   ok"), "{status:?}");
    let fetched = fetch(&proxy_url, &url);
    assert!(fetched.stdout.starts_with("HTTP/1.1 200"), "{fetched:?}");
    assert_eq!(upstream.load(Ordering::SeqCst), 1);
    let set = home.run_stdin(&["secret", "set", "beta"], "another-value");
    assert_eq!(set.code, 0, "{set:?}");
    let after = eval(&home);
    assert_eq!(after.code, 0, "{after:?}");
    acknowledged.push(seq_of(&json(&after.stdout)));
    assert_eq!(home.run(&["daemon", "stop"]).code, 0);

    let verify = home.run(&["audit", "verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let report = json(&verify.stdout);
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["records"], report["last_seq"], "{report}");
    let log = std::fs::read_to_string(home.file("audit").join("evidence-000001.jsonl")).unwrap();
    let decisions: Vec<u64> = log
        .lines()
        .map(json)
        .filter(|r| r["kind"] == "decision")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    for seq in &acknowledged {
        assert!(
            decisions.contains(seq),
            "decision {seq} is missing: {decisions:?}"
        );
    }

    // A start on a full disk fails at once, says why, and leaves no PID
    // file behind to mislead the next start.
    fill(&filler);
    let start = home.run(&["daemon", "start", "--detach"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("cannot take the PID file")
            && start.stderr.contains("No space left on device"),
        "{start:?}"
    );
    assert!(
        std::fs::read_to_string(home.pid_file())
            .unwrap_or_default()
            .is_empty(),
        "no PID in the PID file"
    );
    std::fs::remove_file(&filler).unwrap();
    home.start(&[]);

    // The vault reopens with both secrets, and the value is nowhere else.
    let list = home.run(&["secret", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stdout.contains("alpha") && list.stdout.contains("beta"),
        "{list:?}"
    );
    assert!(home.files_containing(SECRET).is_empty());
}
