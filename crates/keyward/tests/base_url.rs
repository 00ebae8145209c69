//! `keyward run --base-url`: a plain-HTTP endpoint per grant on the
//! proxy's loopback port, for tools that take a base URL and ignore
//! `HTTPS_PROXY` or pin certificates. Real daemon, real HTTPS upstream.

mod common;

use std::time::Duration;

use common::upstream::{SECRET, setup};
use common::{json, wait_for};

#[test]
fn a_base_url_client_needs_no_ca_and_the_token_never_leaves_the_endpoint() {
    let (home, upstream) = setup("");
    let config = home.file("keyward.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("base_url_env = \"LOCAL_BASE_URL\"\nbase_url_path = \"/v1\"\n");
    std::fs::write(&config, text).unwrap();
    let reload = home.http("POST", "/v1/reload", None);
    assert_eq!(reload.0, 200, "{reload:?}");
    // An SDK-style client: base URL and key from the environment, no proxy,
    // no CA variables at all.
    let script = r#"
import json, os, urllib.request, urllib.error
for var in list(os.environ):
    if var.endswith(("_PROXY", "_proxy", "_CA_BUNDLE", "_CA_CERTS", "_CAINFO", "_CERT_FILE", "_CERT_DIR", "ROOTS_FILE_PATH")) or var == "DENO_CERT":
        del os.environ[var]
base = os.environ["LOCAL_BASE_URL"]
print("BASE", base)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(base + "/messages?stream=false", method="POST",
    data=json.dumps({"model": "m"}).encode(),
    headers={"x-api-key": os.environ["LOCAL_TOKEN"], "content-type": "application/json"})
resp = opener.open(req)
print("STATUS", resp.status)
print("BODY", resp.read().decode())
wrong = base.replace("/local/", "/nosuch/")
try:
    opener.open(wrong + "/x")
except urllib.error.HTTPError as e:
    print("WRONG_GRANT", e.code, e.headers.get("x-keyward-blocked"))
bad_token = base.split("/r/")[0] + "/r/" + "0" * 64 + "/local/v1/x"
try:
    opener.open(bad_token)
except urllib.error.HTTPError as e:
    print("BAD_TOKEN", e.code)
"#;
    let out = home.run(&[
        "run",
        "--base-url",
        "--grant",
        "local",
        "--",
        "python3",
        "-c",
        script,
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    let base = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BASE "))
        .unwrap();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/local/v1"),
        "{base}"
    );
    let token = base
        .split("/r/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(out.stdout.contains("STATUS 200"), "{out:?}");
    assert!(
        out.stdout
            .contains("WRONG_GRANT 404 base_url.unknown_grant"),
        "{out:?}"
    );
    assert!(out.stdout.contains("BAD_TOKEN 404"), "{out:?}");
    // Upstream: the secret injected, the path without the endpoint prefix,
    // the Host its own, and the run token nowhere.
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["path"], "/v1/messages?stream=false");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    assert_eq!(
        got[0]["headers"]["host"],
        format!("localhost:{}", upstream.port)
    );
    assert!(!got[0].to_string().contains(&token), "{got:?}");
    assert!(!out.stdout.contains(SECRET), "{out:?}");
    // On record: via base_url, the path without the token; the token is in
    // no file of the home.
    assert!(wait_for(Duration::from_secs(10), || home
        .log()
        .matches("egress")
        .count()
        >= 2));
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "10"]);
    let records: Vec<serde_json::Value> = tail.stdout.lines().map(json).collect();
    assert_eq!(records.len(), 2, "{tail:?}");
    assert_eq!(records[0]["data"]["via"], "base_url");
    assert_eq!(records[0]["data"]["request"]["path"], "/v1/messages");
    assert_eq!(records[1]["data"]["blocked"], "base_url.unknown_grant");
    for needle in [token.as_str(), SECRET] {
        assert!(
            home.files_containing(needle).is_empty(),
            "{needle}: {:?}",
            home.files_containing(needle)
        );
    }
}

#[test]
fn presets_export_their_base_url_variables_and_a_run_without_one_is_refused() {
    let (home, _upstream) = setup("");
    for name in ["anthropic", "openai"] {
        let set = home.run_stdin(&["secret", "set", name], "preset-secret-value");
        assert_eq!(set.code, 0, "{set:?}");
    }
    let out = home.run(&[
        "run",
        "--base-url",
        "--grant",
        "anthropic",
        "--grant",
        "openai",
        "--",
        "sh",
        "-c",
        "echo A=$ANTHROPIC_BASE_URL; echo O=$OPENAI_BASE_URL; echo N=$NO_PROXY",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("/anthropic\n"), "{out:?}");
    assert!(out.stdout.contains("/openai/v1\n"), "{out:?}");
    assert!(out.stdout.contains("N=127.0.0.1,localhost"), "{out:?}");
    // `local` has no base-URL variable: nothing to export is an error.
    let out = home.run(&["run", "--base-url", "--grant", "local", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("base_url_env"), "{out:?}");
}
