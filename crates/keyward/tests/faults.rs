//! Upstream faults through a live run: an upstream that resets its
//! connection in the middle of a body, one that stalls after its response
//! head, and one whose TLS breaks after a good handshake. The child gets a
//! clear error (a 502 that says why, or a body cut short), its next
//! request in the same run works, and the evidence log holds exactly one
//! record for the faulty request, saying what happened.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::{TestHome, json};
use keyward_testkit::{RawEnd, RawRequest, RawUpstream, response};

/// The child: the faulty request, then a good one, each printed as
/// `status bytes-read` or `error <what>`.
const CHILD: &str = r#"
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        r = urllib.request.urlopen(url, timeout=60)
        print(r.status, len(r.read()), flush=True)
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip().replace("\n", " "), flush=True)
    except Exception as e:
        print("error", type(e).__name__, flush=True)
"#;

/// An HTTPS upstream with a fault per path (the test kit's raw upstream,
/// one request per connection): `/ok` answers `fine`; `/reset/N` sends a
/// head declaring a large body, N bytes of it, then resets the
/// connection; `/stall/N` sends a head declaring N bytes, one byte, then
/// nothing; `/garbage` completes its TLS handshake, reads the request and
/// answers in cleartext on the raw socket.
struct Upstream {
    raw: RawUpstream,
    /// Serves it: these tests have no runtime of their own.
    _runtime: tokio::runtime::Runtime,
}

fn faulty(req: &RawRequest) -> (Vec<u8>, RawEnd) {
    let target = req.target();
    let parts: Vec<&str> = target.split('/').collect();
    let n = |i: usize| {
        parts
            .get(i)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let head = |length: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
    match parts.get(1).copied() {
        Some("reset") => {
            let mut out = head("10000000").into_bytes();
            out.extend(std::iter::repeat_n(b'x', n(2)));
            (out, RawEnd::Reset)
        }
        Some("stall") => (format!("{}x", head(parts[2])).into_bytes(), RawEnd::Stall),
        Some("garbage") => (
            Vec::new(),
            RawEnd::Cleartext(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine".to_vec()),
        ),
        _ => (response("200 OK", &[], b"fine"), RawEnd::Close),
    }
}

/// A home whose `local` grant names the faulty upstream, with
/// `proxy_extra` in its `[proxy]` table.
fn setup(proxy_extra: &str) -> (TestHome, Upstream) {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = keyward_proxy::ServiceIdentity::new("localhost").unwrap();
    let raw = runtime.block_on(RawUpstream::tls_ending(&identity, Arc::new(faulty)));
    let ca = home.path.parent().unwrap().join("upstream-ca.pem");
    std::fs::write(&ca, &identity.ca_pem).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = raw.port;
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[proxy]\nupstream_ca = [\"{}\"]\n{proxy_extra}\n\n[grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n",
            ca.display()
        ),
    )
    .unwrap();
    let set = home.run_stdin(&["secret", "set", "local-token"], "kw-faults-SECRET-1f2e3d");
    assert_eq!(set.code, 0, "{set:?}");
    (
        home,
        Upstream {
            raw,
            _runtime: runtime,
        },
    )
}

/// Runs the child on `paths` of the upstream; its output lines.
fn run_child(home: &TestHome, upstream: &Upstream, paths: &[&str]) -> Vec<String> {
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("https://localhost:{}{p}", upstream.raw.port))
        .collect();
    let mut args = vec!["run", "--grant", "local", "--", "python3", "-c", CHILD];
    args.extend(urls.iter().map(String::as_str));
    let run = home.run(&args);
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    run.stdout.lines().map(str::to_owned).collect()
}

/// The egress records, once the daemon has stopped (so every record is
/// on disk).
fn egress_records(home: &TestHome) -> Vec<serde_json::Value> {
    assert_eq!(home.run(&["daemon", "stop"]).code, 0);
    let tail = home.run(&["audit", "tail", "-n", "1000", "--json", "--kind", "egress"]);
    assert_eq!(tail.code, 0, "{tail:?}");
    tail.stdout.lines().map(json).collect()
}

/// Those of `records` about requests to `path`.
fn to(records: &[serde_json::Value], path: &str) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["data"]["request"]["path"] == path)
        .cloned()
        .collect()
}

#[test]
fn a_reset_in_the_middle_of_a_body_cuts_the_stream_and_is_recorded() {
    let (home, upstream) = setup("");
    let out = run_child(&home, &upstream, &["/reset/200000", "/ok"]);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("error IncompleteRead"),
        "the child sees the body cut short: {out:?}"
    );
    assert_eq!(out[1], "200 4", "the run keeps working: {out:?}");
    let records = egress_records(&home);
    let reset = to(&records, "/reset/200000");
    assert_eq!(reset.len(), 1, "{records:?}");
    let response = &reset[0]["data"]["response"];
    assert_eq!(response["status"], 200, "{response}");
    let error = response["error"].as_str().unwrap_or_default();
    assert!(error.contains("broke off"), "{response}");
    assert_eq!(to(&records, "/ok").len(), 1, "{records:?}");
}

#[test]
fn an_upstream_that_stalls_after_its_head_is_cut_off() {
    let (home, upstream) = setup("response_header_timeout = \"2s\"");
    // A small body is read whole to be scrubbed before the head goes out:
    // a stall is a 502 that says so. A large one streams: it is cut.
    let out = run_child(&home, &upstream, &["/stall/100", "/stall/10000000", "/ok"]);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        out[0].starts_with("502 ") && out[0].contains("stalled"),
        "{out:?}"
    );
    assert!(out[1].starts_with("error IncompleteRead"), "{out:?}");
    assert_eq!(out[2], "200 4", "the run keeps working: {out:?}");
    let records = egress_records(&home);
    let small = to(&records, "/stall/100");
    assert_eq!(small.len(), 1, "{records:?}");
    let response = &small[0]["data"]["response"];
    assert_eq!(response["status"], 502);
    assert!(
        response["error"]
            .as_str()
            .is_some_and(|e| e.contains("stalled")),
        "{response}"
    );
    let large = to(&records, "/stall/10000000");
    assert_eq!(large.len(), 1, "{records:?}");
    let response = &large[0]["data"]["response"];
    assert!(
        response["error"]
            .as_str()
            .is_some_and(|e| e.contains("stalled")),
        "{response}"
    );
}

#[test]
fn a_tls_failure_after_a_good_handshake_is_a_502_saying_why() {
    let (home, upstream) = setup("");
    let out = run_child(&home, &upstream, &["/garbage", "/ok"]);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("502 ") && out[0].contains("could not reach"),
        "{out:?}"
    );
    assert_eq!(out[1], "200 4", "the run keeps working: {out:?}");
    let records = egress_records(&home);
    let garbage = to(&records, "/garbage");
    assert_eq!(garbage.len(), 1, "{records:?}");
    let response = &garbage[0]["data"]["response"];
    assert_eq!(response["status"], 502);
    assert!(
        response["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no response: ")),
        "{response}"
    );
}
