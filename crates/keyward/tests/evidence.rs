//! The evidence log against someone who wants it to say less: secrets a
//! child puts into its requests, records deleted from the tail (while the
//! daemon is stopped, or behind a verifier's back), forged head files, and
//! a log that spans a signing-key rotation. Real daemon, real child
//! processes (curl through `keyward run`), the real CLI.

mod common;

use std::path::{Path, PathBuf};

use common::{TestHome, json, wait_for};

const RUN_SECRET: &str = "kw-file-SECRET-5b1c0e97d3";
const VAULT_SECRET: &str = "kw-vault-SECRET-8e4f2a61c9";

/// `[audit]` signing with `key`, rotating segments at `segment_bytes`.
fn write_config(home: &TestHome, key: &Path, segment_bytes: u64) {
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[audit]\ned25519_key_file = \"{}\"\nsegment_bytes = {segment_bytes}\n",
            key.display()
        ),
    )
    .unwrap();
}

/// A new Ed25519 key pair outside the home: (private, public).
fn keygen(home: &TestHome, name: &str) -> (PathBuf, PathBuf) {
    let stem = home.path.parent().unwrap().join(name);
    let run = home.run(&["audit", "keygen", "--out", stem.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    (stem.with_extension("key"), stem.with_extension("pub"))
}

/// `n` decisions, each recorded.
fn decide(home: &TestHome, n: usize) {
    for i in 0..n {
        let r = home.run(&[
            "eval",
            "--action",
            "read_file",
            "--target",
            &format!("src/f{i}.rs"),
        ]);
        assert_eq!(r.code, 0, "{r:?}");
    }
}

fn stop(home: &TestHome) {
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}\n{}", home.log());
}

/// The newest segment's path.
fn newest_segment(home: &TestHome) -> PathBuf {
    keyward_evidence::list_segments(&home.file("audit"))
        .unwrap()
        .pop()
        .unwrap()
        .1
}

/// Drops the last `n` whole records of the newest segment (which must hold
/// more than `n`).
fn cut_tail(home: &TestHome, n: usize) {
    let segment = newest_segment(home);
    let text = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > n, "{segment:?} holds {} records", lines.len());
    let kept: String = lines[..lines.len() - n]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&segment, kept).unwrap();
}

#[test]
fn a_secret_the_child_puts_into_its_requests_is_redacted_in_egress_records_and_the_log() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let outside = home.path.parent().unwrap();
    // The run's secret comes from a file backend; the other one sits in the
    // vault, granted to nobody. The child reads both from a file it found
    // (as an agent reads a .env), so neither is in its env or argv.
    let secret_file = outside.join("run-secret");
    std::fs::write(&secret_file, RUN_SECRET).unwrap();
    let leak = outside.join("found.env");
    std::fs::write(&leak, format!("{RUN_SECRET}\n{VAULT_SECRET}\n")).unwrap();
    for file in [&secret_file, &leak] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[grants.filed]\nsecret = \"file:{}\"\nhosts = [\"api.example.invalid\"]\n\
             inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let set = home.run_stdin(&["secret", "set", "other-token"], VAULT_SECRET);
    assert_eq!(set.code, 0, "{set:?}");
    // Port 9 on loopback: nothing listens, so nothing is sent anywhere;
    // the proxy answers and records each request all the same. The method,
    // the path and the query carry both secrets and the run's own token.
    let script = format!(
        r#"S=$(sed -n 1p {leak}); V=$(sed -n 2p {leak})
T=${{HTTPS_PROXY#http://run:}}; T=${{T%%@*}}
echo token_length=${{#T}}
curl -s -o /dev/null -w "plain=%{{http_code}}\n" -X "$S" "http://127.0.0.1:9/p/$S/$T/$V?q=$V&t=$T"
curl -s -o /dev/null -w "tls=%{{http_code}}\n" "https://127.0.0.1:9/p/$V/x$S?k=$S&t=$T"
echo "token=$T""#,
        leak = leak.display()
    );
    let out = home.run(&["run", "--grant", "filed", "--", "sh", "-c", &script]);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("token_length=64"), "{out:?}");
    assert!(
        out.stdout.contains("plain=") && out.stdout.contains("tls="),
        "{out:?}"
    );
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .unwrap()
        .to_owned();

    // Both requests are on record (and their log lines written, which
    // follow the records onto disk), redacted.
    assert!(
        wait_for(std::time::Duration::from_secs(10), || {
            home.log().matches("egress").count() >= 2
        }),
        "{}",
        home.log()
    );
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "10"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(records.len(), 2, "{tail:?}");
    assert_eq!(records[0]["data"]["request"]["method"], "[REDACTED]");
    assert_eq!(
        records[0]["data"]["request"]["path"],
        "/p/[REDACTED]/[REDACTED]/[REDACTED]"
    );
    assert_eq!(
        records[1]["data"]["request"]["path"],
        "/p/[REDACTED]/x[REDACTED]"
    );
    assert!(
        home.log().contains("path=\"/p/[REDACTED]/x[REDACTED]\""),
        "{}",
        home.log()
    );
    // Nowhere in the home (vault snapshots are encrypted), daemon.log included.
    for needle in [RUN_SECRET, VAULT_SECRET, token.as_str()] {
        assert!(
            home.files_containing(needle).is_empty(),
            "{needle} in {:?}",
            home.files_containing(needle)
        );
    }
}

/// The daemon keeps the secret values it redacts as one matcher, built
/// again only when they change: a value rotated while a run lives (in the
/// file backend, re-resolved on every request here, and in the vault) is
/// redacted from the first record after the change, the old one still.
#[test]
fn secrets_rotated_while_a_run_lives_are_redacted_from_the_next_record_on() {
    const RUN_SECRET_2: &str = "kw-file-SECRET-rotated-77a0c4";
    const VAULT_SECRET_2: &str = "kw-vault-SECRET-rotated-3d9e1b";
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let outside = home.path.parent().unwrap();
    let secret_file = outside.join("run-secret");
    std::fs::write(&secret_file, RUN_SECRET).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[backends]\ncache_ttl = \"off\"\n\
             [grants.filed]\nsecret = \"file:{}\"\nhosts = [\"api.example.invalid\"]\n\
             inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let set = home.run_stdin(&["secret", "set", "other-token"], VAULT_SECRET);
    assert_eq!(set.code, 0, "{set:?}");
    // The child sends whatever the leak file holds, then waits for the
    // test to rotate both secrets and leak the new values.
    let leak = outside.join("found.env");
    let go = outside.join("go");
    std::fs::write(&leak, format!("{RUN_SECRET} {VAULT_SECRET}\n")).unwrap();
    let script = format!(
        r#"send() {{ read S V < {leak}; curl -s -o /dev/null -w "sent=%{{http_code}}\n" "http://127.0.0.1:9/p/$S/$V"; }}
send
while [ ! -e {go} ]; do sleep 0.05; done
send"#,
        leak = leak.display(),
        go = go.display()
    );
    let child = home
        .cmd(&["run", "--grant", "filed", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(std::time::Duration::from_secs(20), || {
            home.log().matches("egress").count() >= 1
        }),
        "{}",
        home.log()
    );
    std::fs::write(&secret_file, RUN_SECRET_2).unwrap();
    let set = home.run_stdin(&["secret", "set", "other-token"], VAULT_SECRET_2);
    assert_eq!(set.code, 0, "{set:?}");
    std::fs::write(&leak, format!("{RUN_SECRET_2} {VAULT_SECRET_2}\n")).unwrap();
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", home.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("sent=")
            .count(),
        2,
        "{out:?}"
    );
    assert!(
        wait_for(std::time::Duration::from_secs(10), || {
            home.log().matches("egress").count() >= 2
        }),
        "{}",
        home.log()
    );
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "10"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(records.len(), 2, "{tail:?}");
    for record in &records {
        assert_eq!(
            record["data"]["request"]["path"], "/p/[REDACTED]/[REDACTED]",
            "{record}"
        );
    }
    for needle in [RUN_SECRET, VAULT_SECRET, RUN_SECRET_2, VAULT_SECRET_2] {
        assert!(
            home.files_containing(needle).is_empty(),
            "{needle} in {:?}",
            home.files_containing(needle)
        );
    }
}

#[test]
fn a_tail_cut_while_the_daemon_is_stopped_is_detected_recorded_and_shown() {
    let home = TestHome::new();
    let (private, public) = keygen(&home, "ci");
    write_config(&home, &private, 1 << 20);
    decide(&home, 12);
    stop(&home);
    let saved = home.path.parent().unwrap().join("head.json");
    let head = home.run(&["audit", "head", "--json"]);
    assert_eq!(head.code, 0, "{head:?}");
    std::fs::write(&saved, &head.stdout).unwrap();
    let text = home.run(&["audit", "head"]);
    let anchor = text.stdout.lines().next().unwrap().to_owned();
    let head = json(&head.stdout);
    assert_eq!(
        anchor,
        format!("{}:{}", head["seq"], head["hash"].as_str().unwrap())
    );
    assert_eq!(head["sig"]["alg"], "Ed25519");

    cut_tail(&home, 3);
    let public = public.to_str().unwrap();
    // The log's own head catches a cut that left it alone...
    let own = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(own.code, 1, "{own:?}");
    assert!(
        own.stdout.contains("expected_head: the log ends at seq")
            && own.stdout.contains("head.json)"),
        "{own:?}"
    );
    // ...but not one that took the head too: the chain alone cannot tell...
    let local_head = std::fs::read(home.file("audit/head.json")).unwrap();
    std::fs::remove_file(home.file("audit/head.json")).unwrap();
    let plain = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(plain.code, 0, "{plain:?}");
    assert!(
        plain.stderr.contains("--expect-head") && plain.stderr.contains("no head.json"),
        "{plain:?}"
    );
    // ...a head kept elsewhere can, in either form.
    let by_anchor = home.run(&[
        "audit",
        "verify",
        "--public-key",
        public,
        "--expect-head",
        &anchor,
    ]);
    let by_file = home.run(&[
        "audit",
        "verify",
        "--public-key",
        public,
        "--head",
        saved.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(by_anchor.code, 1, "{by_anchor:?}");
    assert!(
        by_anchor
            .stdout
            .contains("expected_head: the log ends at seq")
            && by_anchor.stdout.contains("INVALID"),
        "{by_anchor:?}"
    );
    assert_eq!(by_file.code, 1, "{by_file:?}");
    let report = json(&by_file.stdout);
    assert_eq!(report["errors"][0]["check"], "expected_head", "{report}");
    assert_eq!(report["expected_head"], anchor.as_str());
    assert_eq!(report["head_source"], saved.to_str().unwrap());
    // An altered head is itself a failure, named as such.
    std::fs::write(home.file("audit/head.json"), "garbage").unwrap();
    let altered = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(altered.code, 1, "{altered:?}");
    assert!(
        altered.stdout.contains("INVALID")
            && altered
                .stdout
                .contains("head.json:0: head: head.json is unreadable"),
        "{altered:?}"
    );
    // So is one stripped of its signature (rolled forward or back by
    // someone without the key).
    let mut unsigned: serde_json::Value = serde_json::from_slice(&local_head).unwrap();
    unsigned.as_object_mut().unwrap().remove("sig");
    std::fs::write(home.file("audit/head.json"), unsigned.to_string()).unwrap();
    let stripped = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(stripped.code, 1, "{stripped:?}");
    assert!(
        stripped
            .stdout
            .contains("head.json:0: head: head.json refused"),
        "{stripped:?}"
    );
    std::fs::write(home.file("audit/head.json"), local_head).unwrap();

    // The daemon finds the cut at start: on record, and said by status and health.
    home.start(&[]);
    let status = home.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("evidence:   WARNING: the evidence log ends at seq")
            && status
                .stdout
                .contains("3 record(s) were deleted from its tail"),
        "{status:?}"
    );
    let (_, health) = home.http("GET", "/v1/health", None);
    assert!(
        json(&health)["evidence_warning"]
            .as_str()
            .is_some_and(|w| w.contains("deleted from its tail")),
        "{health}"
    );
    let tail = home.run(&["audit", "tail", "--kind", "admin", "--json", "-n", "2"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(
        records[0]["data"]["event"], "truncation_detected",
        "{tail:?}"
    );
    assert_eq!(records[0]["data"]["head_seq"], head["seq"]);
    stop(&home);
    // The records that came after it do not bring the old head back.
    let again = home.run(&[
        "audit",
        "verify",
        "--public-key",
        public,
        "--expect-head",
        &anchor,
    ]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stdout.contains("the log was rewritten from here"),
        "{again:?}"
    );
}

#[test]
fn deleting_the_last_segment_fails_verify_against_the_head() {
    let home = TestHome::new();
    let (private, public) = keygen(&home, "ci");
    write_config(&home, &private, 4096);
    decide(&home, 30);
    stop(&home);
    let anchor = home
        .run(&["audit", "head"])
        .stdout
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        keyward_evidence::list_segments(&home.file("audit"))
            .unwrap()
            .len()
            > 2
    );
    std::fs::remove_file(newest_segment(&home)).unwrap();
    let public = public.to_str().unwrap();
    let own = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(own.code, 1, "the log's own head: {own:?}");
    std::fs::remove_file(home.file("audit/head.json")).unwrap();
    let plain = home.run(&["audit", "verify", "--public-key", public]);
    assert_eq!(plain.code, 0, "the chain alone: {plain:?}");
    let verify = home.run(&[
        "audit",
        "verify",
        "--public-key",
        public,
        "--expect-head",
        &anchor,
    ]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify.stdout.contains("deleted from the tail"),
        "{verify:?}"
    );
}

#[test]
fn bad_anchors_and_missing_or_forged_head_files_are_refused_clearly() {
    let home = TestHome::new();
    let (private, public) = keygen(&home, "ci");
    let (_, other_public) = keygen(&home, "other");
    let none = home.run(&["audit", "head"]);
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no head checkpoint at"), "{none:?}");
    write_config(&home, &private, 4096);
    decide(&home, 3);
    stop(&home);
    let public = public.to_str().unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--public-key", public];
        args.extend_from_slice(extra);
        home.run(&args)
    };

    // A malformed --expect-head, or one given with --head, is a usage error
    // (2) before any file is read: tests/cmd/usage/expect-head-*.toml.
    // Repeating --key-id past the keys given is one only once the log is read.
    let ids = verify(&["--key-id", "a", "--key-id", "b"]);
    assert_eq!(ids.code, 2, "{ids:?}");
    assert!(ids.stderr.contains("once per key"), "{ids:?}");

    let dir = home.path.parent().unwrap();
    let missing = verify(&["--head", dir.join("nowhere.json").to_str().unwrap()]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("cannot read the head file"),
        "{missing:?}"
    );
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let run = verify(&["--head", garbage.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("not a keyward head checkpoint"),
        "{run:?}"
    );

    let saved = dir.join("head.json");
    std::fs::write(&saved, home.run(&["audit", "head", "--json"]).stdout).unwrap();
    let saved_arg = saved.to_str().unwrap();
    assert_eq!(verify(&["--head", saved_arg]).code, 0);
    // Without a key it cannot be checked; with another key it is refused.
    let unkeyed = home.run(&["audit", "verify", "--head", saved_arg]);
    assert_eq!(unkeyed.code, 1, "{unkeyed:?}");
    assert!(unkeyed.stderr.contains("give its key"), "{unkeyed:?}");
    let other = home.run(&[
        "audit",
        "verify",
        "--public-key",
        other_public.to_str().unwrap(),
        "--head",
        saved_arg,
    ]);
    assert_eq!(other.code, 1, "{other:?}");
    assert!(
        other.stderr.contains("refused") && other.stderr.contains("key(s) given"),
        "{other:?}"
    );
    // Edited to an earlier record, to pass after a cut: the signature says no.
    let mut forged = json(&std::fs::read_to_string(&saved).unwrap());
    forged["seq"] = serde_json::json!(forged["seq"].as_u64().unwrap() - 1);
    std::fs::write(&saved, forged.to_string()).unwrap();
    let run = verify(&["--head", saved_arg]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("forged or altered"), "{run:?}");
    // Another log's head.
    let elsewhere = TestHome::new();
    write_config(&elsewhere, &private, 4096);
    decide(&elsewhere, 1);
    stop(&elsewhere);
    std::fs::write(&saved, elsewhere.run(&["audit", "head", "--json"]).stdout).unwrap();
    let run = verify(&["--head", saved_arg]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("is the head of log"), "{run:?}");
}

#[test]
fn a_log_spanning_a_key_rotation_verifies_with_both_public_keys_and_fails_with_one() {
    let home = TestHome::new();
    let (old_private, old_public) = keygen(&home, "old");
    let (new_private, new_public) = keygen(&home, "new");
    write_config(&home, &old_private, 4096);
    decide(&home, 3);
    stop(&home);
    write_config(&home, &new_private, 4096);
    decide(&home, 3);
    // The new key cannot vouch for the head the old one signed: said once.
    let status = home.run(&["status"]);
    assert!(
        status.stdout.contains("cannot be trusted") && status.stdout.contains("signing key"),
        "{status:?}"
    );
    stop(&home);
    let (old, new) = (old_public.to_str().unwrap(), new_public.to_str().unwrap());
    let both = home.run(&[
        "audit",
        "verify",
        "--public-key",
        old,
        "--public-key",
        new,
        "--json",
    ]);
    assert_eq!(both.code, 0, "{both:?}");
    let report = json(&both.stdout);
    assert_eq!(report["records"], report["signed_records"]);
    for one in [old, new] {
        let run = home.run(&["audit", "verify", "--public-key", one]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stdout.contains(": key_id: "), "{run:?}");
    }
    // The new head verifies with the set.
    let anchor = home
        .run(&["audit", "head"])
        .stdout
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let anchored = home.run(&[
        "audit",
        "verify",
        "--public-key",
        old,
        "--public-key",
        new,
        "--expect-head",
        &anchor,
    ]);
    assert_eq!(anchored.code, 0, "{anchored:?}");
}
