//! The vault and write-only secrets, through the real binary and daemon.

mod common;

use std::time::Duration;

use common::{Run, TestHome, json, wait_for};

const SECRET: &str = "kw-test-SECRET-4f1c9a77e2";

fn set(home: &TestHome, name: &str, value: &str) -> Run {
    home.run_stdin(&["secret", "set", name], value)
}

fn assert_ok(run: &Run) {
    assert_eq!(run.code, 0, "{run:?}");
}

fn assert_no_leak(home: &TestHome, runs: &[&Run]) {
    let files = home.files_containing(SECRET);
    assert!(files.is_empty(), "secret value found in {files:?}");
    for run in runs {
        assert!(
            !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
            "{run:?}"
        );
    }
}

#[test]
fn set_list_rm_round_trip_survives_restart_and_never_leaks() {
    let home = TestHome::new();
    // The first set creates the daemon and a key-file vault.
    let first = home.run_stdin(
        &[
            "secret",
            "set",
            "github-token",
            "--description",
            "GitHub PAT",
        ],
        &format!("{SECRET}\n"),
    );
    assert_ok(&first);
    assert!(
        first
            .stdout
            .contains("stored secret github-token (fingerprint "),
        "{first:?}"
    );
    assert!(
        first.stderr.contains("created a key-file vault"),
        "{first:?}"
    );

    let list = home.run(&["secret", "list", "--json"]);
    assert_ok(&list);
    let v = json(&list.stdout);
    let secrets = v["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["name"], "github-token");
    assert_eq!(secrets[0]["description"], "GitHub PAT");
    let fingerprint = secrets[0]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 8);

    // Same value, same fingerprint; another value, another fingerprint.
    let again = set(&home, "github-token", SECRET);
    assert_ok(&again);
    assert!(again.stdout.contains(&fingerprint), "{again:?}");
    let other = set(&home, "other", "different-value");
    assert_ok(&other);
    assert!(!other.stdout.contains(&fingerprint));

    let restart = home.run(&["daemon", "restart"]);
    assert_ok(&restart);
    let after = home.run(&["secret", "list"]);
    assert_ok(&after);
    assert!(after.stdout.contains("github-token") && after.stdout.contains(&fingerprint));

    let status = home.run(&["vault", "status", "--json"]);
    let v = json(&status.stdout);
    assert_eq!(v["state"], "unsealed");
    assert_eq!(v["mode"], "key_file");
    assert_eq!(v["secrets"], 2);
    assert!(v["vault_id"].as_str().unwrap().len() == 32);

    // `keyward status` states the protection level honestly.
    let st = json(&home.run(&["status", "--json"]).stdout);
    assert_eq!(st["vault_state"], "unsealed");
    assert_eq!(st["vault_mode"], "key_file");
    assert!(
        st["protection"]
            .as_str()
            .unwrap()
            .contains("can read vault/identity.txt"),
        "{st}"
    );
    // ... and what confines runs on this kernel.
    let sandboxed = keyward_sys::landlock_abi() >= 6;
    assert_eq!(
        st["protection"]
            .as_str()
            .unwrap()
            .contains("sandboxed runs available"),
        sandboxed,
        "{st}"
    );

    let rm = home.run(&["secret", "rm", "other"]);
    assert_ok(&rm);
    let rm_again = home.run(&["secret", "rm", "other"]);
    assert_eq!(rm_again.code, 1);
    assert!(
        rm_again.stderr.contains("no secret named other"),
        "{rm_again:?}"
    );

    // No route returns a value: raw API answers carry none.
    let (_, body) = home.http("GET", "/v1/secrets", None);
    assert!(!body.contains(SECRET));
    let (_, body) = home.http("GET", "/v1/vault", None);
    assert!(!body.contains(SECRET));
    assert_no_leak(&home, &[&first, &list, &again, &after, &status, &restart]);
}

#[test]
fn values_come_from_file_or_env_never_argv_and_bad_input_is_refused() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let file = home.path.parent().unwrap().join("value.txt");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let from_file = home.run(&["secret", "set", "f", "--from-file", file.to_str().unwrap()]);
    assert_ok(&from_file);
    let from_env = home
        .cmd(&["secret", "set", "e", "--from-env", "KW_TEST_VALUE"])
        .env("KW_TEST_VALUE", SECRET)
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(0));
    let out = home.run(&["secret", "list", "--json"]);
    let v = json(&out.stdout);
    let fps: Vec<_> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["fingerprint"].clone())
        .collect();
    assert_eq!(fps[0], fps[1], "file and env carried the same value");

    // A value on argv is not even accepted by the parser.
    let argv = home.run(&["secret", "set", "x", SECRET]);
    assert_eq!(argv.code, 2, "{argv:?}");

    let bad = home.run_stdin(&["secret", "set", "Bad Name"], "v");
    assert_eq!(bad.code, 64, "{bad:?}");
    assert!(bad.stderr.contains("lowercase letters, digits"), "{bad:?}");
    let empty = home.run_stdin(&["secret", "set", "empty"], "\n");
    assert_eq!(empty.code, 1, "{empty:?}");
    assert!(empty.stderr.contains("empty"), "{empty:?}");

    let (status, body) = home.http("PUT", "/v1/secrets/x", Some("{\"value\": "));
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"]["code"], "bad_request");
    let (status, body) = home.http("PUT", "/v1/secrets/x", Some("{\"value\": \"\"}"));
    assert_eq!(status, 400);
    assert_eq!(json(&body)["error"]["code"], "empty_value");
    let (status, body) = home.http("PUT", "/v1/secrets/UP", Some("{\"value\": \"v\"}"));
    assert_eq!(status, 400);
    assert_eq!(json(&body)["error"]["code"], "invalid_name");
    assert_no_leak(&home, &[&from_file, &out]);
}

#[test]
fn passphrase_vault_starts_sealed_and_wrong_passphrase_changes_nothing() {
    let home = TestHome::new();
    let init = home.run_stdin(&["vault", "init", "--passphrase"], "correct horse\n");
    assert_ok(&init);
    assert_ok(&set(&home, "token", SECRET));
    assert_ok(&home.run(&["daemon", "restart"]));

    let status = json(&home.run(&["vault", "status", "--json"]).stdout);
    assert_eq!(status["state"], "sealed");
    assert_eq!(status["mode"], "passphrase");
    let st = json(&home.run(&["status", "--json"]).stdout);
    assert!(
        st["protection"]
            .as_str()
            .unwrap()
            .contains("only in the daemon's"),
        "{st}"
    );

    // Sealed: 423 wherever a secret is needed, saying how to unseal.
    let list = home.run(&["secret", "list"]);
    assert_eq!(list.code, 1);
    assert!(list.stderr.contains("keyward vault unseal"), "{list:?}");
    for (method, path, body) in [
        ("GET", "/v1/secrets", None),
        ("PUT", "/v1/secrets/a", Some("{\"value\":\"v\"}")),
        ("DELETE", "/v1/secrets/token", None),
    ] {
        let (code, text) = home.http(method, path, body);
        assert_eq!(code, 423, "{method} {path}: {text}");
        assert_eq!(json(&text)["error"]["code"], "vault_sealed");
    }

    let history = home.run(&["vault", "history", "--json"]).stdout;
    let wrong = home.run_stdin(&["vault", "unseal"], "wrong horse\n");
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("wrong passphrase"), "{wrong:?}");
    assert_eq!(home.run(&["vault", "history", "--json"]).stdout, history);
    assert_eq!(
        json(&home.run(&["vault", "status", "--json"]).stdout)["state"],
        "sealed"
    );

    let right = home.run_stdin(&["vault", "unseal"], "correct horse\n");
    assert_ok(&right);
    assert_ok(&home.run(&["secret", "list"]));
    assert_ok(&home.run(&["vault", "seal"]));
    assert_eq!(home.run(&["secret", "list"]).code, 1);
    assert_no_leak(&home, &[&init, &right]);
    assert!(home.files_containing("correct horse").is_empty());
}

#[test]
fn idle_passphrase_vault_seals_itself() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), "[vault]\nidle_seal = \"1s\"\n").unwrap();
    assert_ok(&home.run_stdin(&["vault", "init", "--passphrase"], "pw\n"));
    assert_eq!(
        json(&home.run(&["vault", "status", "--json"]).stdout)["state"],
        "unsealed"
    );
    assert!(wait_for(Duration::from_secs(10), || {
        json(&home.run(&["vault", "status", "--json"]).stdout)["state"] == "sealed"
    }));
    assert!(
        home.log().contains("vault sealed after 1s unused"),
        "{}",
        home.log()
    );
}

#[test]
fn swapped_vault_is_refused_loudly() {
    let home = TestHome::new();
    let other = TestHome::new();
    assert_ok(&set(&home, "a", "value-a"));
    assert_ok(&set(&other, "b", "value-b"));
    assert_ok(&home.run(&["daemon", "stop"]));
    assert_ok(&other.run(&["daemon", "stop"]));
    // Replace home's vault (keys and snapshots) with the other one, keeping
    // home's trust record.
    let vault = home.path.join("vault");
    let trust = std::fs::read(vault.join("trust")).unwrap();
    std::fs::remove_dir_all(&vault).unwrap();
    // 0700 as keyward makes it: a vault directory open to others is refused
    // for that before its id is looked at.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&vault)
        .unwrap();
    for entry in std::fs::read_dir(other.path.join("vault")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), vault.join(entry.file_name())).unwrap();
    }
    std::fs::write(vault.join("trust"), trust).unwrap();

    home.start(&[]);
    let list = home.run(&["secret", "list"]);
    assert_eq!(list.code, 1, "{list:?}");
    assert!(list.stderr.contains("VAULT REFUSED"), "{list:?}");
    assert!(list.stderr.contains("the vault was replaced"), "{list:?}");
    let set_run = set(&home, "c", "value-c");
    assert_eq!(set_run.code, 1, "{set_run:?}");
    assert!(home.log().contains("VAULT REFUSED"), "{}", home.log());
}

#[test]
fn rollback_appends_and_keep_limits_history() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), "[vault]\nkeep = 4\n").unwrap();
    assert_ok(&set(&home, "a", "one"));
    let snaps = json(&home.run(&["vault", "history", "--json"]).stdout);
    let with_one = snaps["snapshots"].as_array().unwrap().last().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let fp_one =
        json(&home.run(&["secret", "list", "--json"]).stdout)["secrets"][0]["fingerprint"].clone();
    assert_ok(&set(&home, "a", "two"));
    assert_ok(&set(&home, "b", "three"));

    let rb = home.run(&["vault", "rollback", &with_one]);
    assert_ok(&rb);
    assert!(rb.stdout.contains("rolled back"), "{rb:?}");
    let list = json(&home.run(&["secret", "list", "--json"]).stdout);
    let secrets = list["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 1, "b did not exist then: {list}");
    assert_eq!(secrets[0]["fingerprint"], fp_one);

    let history = json(&home.run(&["vault", "history", "--json"]).stdout);
    let names: Vec<_> = history["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 4, "vault.keep = 4: {names:?}");
    assert!(names.last().unwrap().contains("_rollback-to-"), "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "names sort in write order");

    let missing = home.run(&["vault", "rollback", "20000101T000000Z_nope.age"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no snapshot named"), "{missing:?}");
}

#[test]
fn corrupt_newest_snapshot_is_a_clear_error_and_older_ones_survive() {
    let home = TestHome::new();
    assert_ok(&set(&home, "a", "one"));
    assert_ok(&set(&home, "a", "two"));
    assert_ok(&home.run(&["daemon", "stop"]));
    let history_before: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(home.path.join("vault"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("20"))
            .collect();
        v.sort();
        v
    };
    let newest = history_before.last().unwrap();
    let older: Vec<(std::path::PathBuf, Vec<u8>)> = history_before[..history_before.len() - 1]
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    std::fs::write(newest, b"this is not an age file").unwrap();

    home.start(&[]);
    let list = home.run(&["secret", "list"]);
    assert_eq!(list.code, 1, "{list:?}");
    assert!(list.stderr.contains("cannot be read"), "{list:?}");
    assert!(
        list.stderr
            .contains(newest.file_name().unwrap().to_str().unwrap()),
        "{list:?}"
    );
    assert!(list.stderr.contains("keyward vault rollback"), "{list:?}");
    let status = json(&home.run(&["vault", "status", "--json"]).stdout);
    assert!(
        status["error"].as_str().unwrap().contains("cannot be read"),
        "{status}"
    );

    for (path, bytes) in &older {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    let previous = older
        .last()
        .unwrap()
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ok(&home.run(&["vault", "rollback", &previous]));
    assert_ok(&home.run(&["secret", "list"]));
}

#[test]
fn concurrent_setters_on_a_fresh_home_lose_no_write() {
    let home = TestHome::new();
    let children: Vec<_> = (0..8)
        .map(|i| home.spawn_stdin(&["secret", "set", &format!("s{i}")], &format!("value-{i}")))
        .collect();
    for child in children {
        let run = Run::from(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    }
    let list = json(&home.run(&["secret", "list", "--json"]).stdout);
    let names: Vec<_> = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, (0..8).map(|i| format!("s{i}")).collect::<Vec<_>>());
    // Exactly one daemon and one vault came out of the race.
    assert_eq!(
        home.log().matches("keyward daemon ready").count(),
        1,
        "{}",
        home.log()
    );
    assert_eq!(
        home.log().matches("vault initialized").count(),
        1,
        "{}",
        home.log()
    );
}

/// A secret over 256 KiB is refused by the command line before anything is
/// sent, and by the daemon (413 `secret_too_large`), both naming the limit;
/// nothing is stored. A short new passphrase is warned about, not refused.
#[test]
fn oversized_secrets_are_refused_saying_the_limit_and_short_passphrases_warned() {
    let home = TestHome::new();
    assert_ok(&set(&home, "small", "v"));
    let big = "x".repeat(300 * 1024);
    let refused = set(&home, "big", &big);
    assert_eq!(refused.code, 1, "{:?}", refused.stderr);
    assert!(
        refused.stderr.contains("at most 256 KiB") && refused.stderr.contains("file:/path"),
        "{}",
        refused.stderr
    );
    let body = serde_json::json!({ "value": big }).to_string();
    let (status, answer) = home.http("PUT", "/v1/secrets/big", Some(&body));
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("secret_too_large") && answer.contains("256 KiB"),
        "{answer}"
    );
    let list = home.run(&["secret", "list"]);
    assert!(
        list.stdout.contains("small") && !list.stdout.contains("big"),
        "{list:?}"
    );
    home.run(&["daemon", "stop"]);

    for (passphrase, warned) in [("pw", true), ("correct horse battery staple", false)] {
        let home = TestHome::new();
        let init = home.run_stdin(
            &["vault", "init", "--passphrase"],
            &format!("{passphrase}\n"),
        );
        assert_ok(&init);
        assert_eq!(
            init.stderr.contains("weak against guessing"),
            warned,
            "{passphrase}: {init:?}"
        );
        home.run(&["daemon", "stop"]);
    }
}
