//! Commands that need no daemon: version, config check, usage errors.

mod common;

use common::{BIN, Run, TestHome, json};
use std::process::Command;

#[test]
fn version_needs_no_home_no_config_no_daemon() {
    let home = TestHome::new();
    let run = Run::from(
        Command::new(BIN)
            .args(["version", "--json"])
            .env("KEYWARD_HOME", &home.path)
            .env("KEYWARD_CONFIG", "/nonexistent/keyward.toml")
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let v = json(&run.stdout);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v["commit"].as_str().unwrap().is_empty());
    assert!(!home.path.exists(), "version must not create the home");

    let run = Run::from(
        Command::new(BIN)
            .arg("version")
            .env_remove("HOME")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0);
    assert!(
        run.stdout
            .starts_with(&format!("keyward {}", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn help_documents_exit_codes() {
    let run = Run::from(Command::new(BIN).arg("--help").output().unwrap());
    assert_eq!(run.code, 0);
    for needle in ["Exit status:", "64", "not running", "KEYWARD_HOME"] {
        assert!(
            run.stdout.contains(needle),
            "--help lacks {needle}: {}",
            run.stdout
        );
    }
}

#[test]
fn usage_error_is_exit_2() {
    let home = TestHome::new();
    let run = home.run(&["daemon", "frobnicate"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = home.run(&["daemon", "start", "--idle-exit", "soon"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("expected a duration"), "{run:?}");
}

#[test]
fn config_check_prints_effective_defaults_without_a_file() {
    let home = TestHome::new();
    let run = home.run(&["config", "check"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("built-in defaults"), "{run:?}");
    assert!(run.stdout.contains("[daemon]"), "{run:?}");
    assert!(run.stdout.contains("log_level = \"info\""), "{run:?}");

    let run = home.run(&["config", "check", "--json"]);
    let v = json(&run.stdout);
    assert_eq!(v["valid"], true);
    assert_eq!(v["from_file"], false);
    assert_eq!(v["config"]["daemon"]["idle_exit"], "0");
}

#[test]
fn config_check_reads_the_file() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let path = home.file("keyward.toml");
    std::fs::write(
        &path,
        "[daemon]\nidle_exit = \"90s\"\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let run = home.run(&["config", "check", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = json(&run.stdout);
    assert_eq!(v["from_file"], true);
    assert_eq!(v["path"], path.to_str().unwrap());
    assert_eq!(v["config"]["daemon"]["idle_exit"], "1m 30s");
    assert_eq!(v["config"]["daemon"]["log_level"], "debug");
}

#[test]
fn bad_config_is_exit_64_naming_file_and_key_and_nothing_starts() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let path = home.file("keyward.toml");
    std::fs::write(&path, "[daemon]\nidle_exit = \"5s\"\nlisten = true\n").unwrap();
    for args in [
        &["config", "check"][..],
        &["daemon", "start"][..],
        &["daemon", "start", "--detach"][..],
    ] {
        let run = home.run(args);
        assert_eq!(run.code, 64, "{args:?}: {run:?}");
        assert!(run.stderr.contains(path.to_str().unwrap()), "{run:?}");
        assert!(run.stderr.contains("listen"), "{run:?}");
    }
    assert!(
        !home.pid_file().exists(),
        "a bad config must stop before the PID file"
    );
    assert!(
        !home.socket().exists(),
        "a bad config must stop before binding"
    );

    std::fs::write(&path, "[daemon]\nidle_exit = \"soon\"\n").unwrap();
    let run = home.run(&["config", "check"]);
    assert_eq!(run.code, 64);
    assert!(run.stderr.contains("daemon.idle_exit"), "{run:?}");
    assert!(run.stderr.contains("expected a duration"), "{run:?}");

    std::fs::write(&path, "[daemon\n").unwrap();
    let run = home.run(&["config", "check"]);
    assert_eq!(run.code, 64);
    assert!(run.stderr.contains("invalid config file"), "{run:?}");
}

#[test]
fn explicit_config_must_exist() {
    let home = TestHome::new();
    let run = home.run(&["--config", "/nonexistent/k.toml", "config", "check"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stderr.contains("/nonexistent/k.toml does not exist"),
        "{run:?}"
    );
    let run = home
        .cmd(&["daemon", "start"])
        .env("KEYWARD_CONFIG", "/nonexistent/k.toml")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(64));
}
