//! Process hardening, observed from outside the running daemon.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{Run, TestHome, json};

fn limits(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap()
}

fn limit_line<'a>(limits: &'a str, name: &str) -> Vec<&'a str> {
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..].split_whitespace().collect()
}

#[test]
fn no_core_files_and_nofile_raised() {
    let home = TestHome::new();
    let pid = home.start(&[]);
    let limits = limits(pid);
    let core = limit_line(&limits, "Max core file size");
    assert_eq!(&core[..2], ["0", "0"], "{limits}");
    let nofile = limit_line(&limits, "Max open files");
    assert_eq!(nofile[0], nofile[1], "soft limit not raised: {limits}");
}

#[test]
fn daemon_is_not_dumpable_even_for_its_own_user() {
    let is_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if !is_root {
        eprintln!(
            "SKIPPED daemon_is_not_dumpable_even_for_its_own_user: needs root to run the daemon as nobody"
        );
        return;
    }
    // Run the daemon as nobody: a dumpable process's /proc files belong to
    // its own uid; PR_SET_DUMPABLE=0 hands them to root, which is what keeps
    // a same-uid agent out of /proc/<pid>/mem and environ.
    let home = TestHome::new();
    let bin = home.binary_for_other_users();
    std::fs::create_dir(&home.path).unwrap();
    std::os::unix::fs::chown(&home.path, Some(65534), Some(65534)).unwrap();
    let run = Run::from(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["daemon", "start", "--detach", "--json"])
            .env("KEYWARD_HOME", &home.path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    let pid = json(&run.stdout)["pid"].as_u64().unwrap() as u32;

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.contains("65534"),
        "daemon not running as nobody: {uid_line}"
    );
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/environ is owned by uid {owner}: the daemon is dumpable"
    );

    // Unprivileged with a small RLIMIT_MEMLOCK, locking is skipped and said
    // so (setpriv keeps our limits, so ours tell what the daemon had).
    let own = limits(std::process::id());
    let memlock = limit_line(&own, "Max locked memory")[0];
    let small = memlock.parse::<u64>().is_ok_and(|b| b < 1 << 30);
    if small {
        let log = home.log();
        assert!(log.contains("memory not locked: RLIMIT_MEMLOCK"), "{log}");
    }
}

#[test]
fn root_daemon_locks_its_memory() {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("SKIPPED root_daemon_locks_its_memory: not root");
        return;
    }
    let home = TestHome::new();
    let pid = home.start(&["--log-format", "text"]);
    if home.log().contains("memory not locked") {
        // Best effort by design: e.g. a container without CAP_IPC_LOCK.
        eprintln!("SKIPPED root_daemon_locks_its_memory: {}", home.log());
        return;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(locked_kb > 0, "no memory locked: {status}");
}
