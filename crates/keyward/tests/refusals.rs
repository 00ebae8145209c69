//! Every refusal the proxy makes is one value that produces both what the
//! client is told and the evidence record: status, rule
//! (`x-keyward-blocked` / `blocked`) and fault (`x-keyward-fault` /
//! `fault`) agree for each kind, table-driven, through a real daemon.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::upstream::setup;
use common::{json, wait_for};

#[test]
fn every_refusals_answer_and_record_agree() {
    let (home, upstream) = setup("");
    let policy = home.path.parent().unwrap().join("refusals.toml");
    std::fs::write(
        &policy,
        r#"[policy]
id = "refusals"
default = "allow"

[[rules]]
id = "http.blocked.path"
action = "http_request"
target = "localhost:*/blocked/**"
decision = "block"
reason = "not this path"
"#,
    )
    .unwrap();
    // A port nothing listens on, allowed by the run: reachable by the
    // rules, unreachable on the wire.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (p, c) = (upstream.port, closed);
    // (path, curl arguments, status, rule, fault)
    let table: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "/blocked/x",
            format!("https://localhost:{p}/blocked/x"),
            403,
            "http.blocked.path",
            "child",
        ),
        (
            "/strict",
            format!("https://127.0.0.2:{p}/strict"),
            403,
            "network.strict",
            "child",
        ),
        (
            "/mismatch",
            format!("-H 'Host: other.example' https://localhost:{p}/mismatch"),
            403,
            "host_mismatch",
            "child",
        ),
        (
            "/clear",
            format!("http://localhost:{p}/clear"),
            403,
            "plaintext_refused",
            "child",
        ),
        (
            "/wrong",
            format!("-H \"X-Key: $LOCAL_TOKEN\" https://localhost:{c}/wrong"),
            403,
            "placeholder_wrong_host",
            "child",
        ),
        (
            "/down",
            format!("https://localhost:{c}/down"),
            502,
            "upstream_unreachable",
            "upstream",
        ),
    ];
    let mut script = String::new();
    for (path, args, ..) in &table {
        script.push_str(&format!(
            "echo 'CASE {path}'; curl -sS -o /dev/null -D - {args}; echo END\n"
        ));
    }
    let out = home.run(&[
        "run",
        "--grant",
        "local",
        "--network",
        "strict",
        "--allow",
        &format!("localhost:{c}"),
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    // What each client was told, by path.
    let mut told: BTreeMap<String, (u16, String, String)> = BTreeMap::new();
    for case in out.stdout.split("CASE ").skip(1) {
        let (path, rest) = case.split_once('\n').unwrap();
        // The last response head: an intercepted tunnel's CONNECT answer
        // (200) comes first.
        let heads = rest.split("END").next().unwrap().to_lowercase();
        let head = heads.rsplit("http/").next().unwrap().to_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        told.insert(
            path.to_owned(),
            (
                status,
                header("x-keyward-blocked"),
                header("x-keyward-fault"),
            ),
        );
    }
    // What the evidence says, by path.
    assert!(wait_for(Duration::from_secs(10), || {
        home.log().matches("egress").count() >= table.len()
    }));
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "100"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(
        records.len(),
        table.len(),
        "one record per request: {tail:?}"
    );
    for (path, _, status, rule, fault) in &table {
        let (told_status, told_rule, told_fault) = &told[*path];
        assert_eq!(
            (*told_status, told_rule.as_str(), told_fault.as_str()),
            (*status, *rule, *fault),
            "{path}: {out:?}"
        );
        // A tunnel refused at CONNECT is recorded as such, without a path.
        let record = records
            .iter()
            .find(|r| {
                let request = &r["data"]["request"];
                request["path"] == *path
                    || (*path == "/strict"
                        && request["method"] == "CONNECT"
                        && request["host"] == "127.0.0.2")
            })
            .unwrap_or_else(|| panic!("no record for {path}: {records:?}"));
        assert_eq!(record["data"]["response"]["status"], *status, "{record}");
        assert_eq!(record["data"]["blocked"], *rule, "{record}");
        assert_eq!(record["data"]["fault"], *fault, "{record}");
        assert_eq!(record["data"]["via"], "proxy", "{record}");
    }
}
