//! Commands that need no daemon, where a check needs more than one
//! invocation's output: what `version` leaves on disk, what a bad config
//! stops. Their output, exit statuses, `--help` and usage errors are cases in
//! tests/cmd (run by tests/cli_cmd.rs).

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
}

#[test]
fn bad_config_is_exit_64_naming_file_and_key_and_nothing_starts() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let path = home.file("keyward.toml");
    std::fs::write(&path, "[daemon]\nidle_exit = \"5s\"\nlisten = true\n").unwrap();
    // `config check` on the same file: tests/cmd/config/unknown-key.toml.
    for args in [
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
}

/// `daemon start` refuses a config file named but missing, as `config check`
/// does (tests/cmd/config/explicit-missing.toml).
#[test]
fn explicit_config_must_exist() {
    let home = TestHome::new();
    let run = home
        .cmd(&["daemon", "start"])
        .env("KEYWARD_CONFIG", "/nonexistent/k.toml")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(64));
}
