//! Upstream faults through a live run: an upstream that resets its
//! connection in the middle of a body, one that stalls after its response
//! head, and one whose TLS breaks after a good handshake. The child gets a
//! clear error (a 502 that says why, or a body cut short), its next
//! request in the same run works, and the evidence log holds exactly one
//! record for the faulty request, saying what happened.

mod common;

use std::path::PathBuf;
use std::process::Child;

use common::{TestHome, json};

/// An HTTPS upstream with a fault per path: `/ok` answers `fine`;
/// `/reset/N` sends a head declaring a large body, N bytes of it, then
/// resets the connection; `/stall/N` sends a head declaring N bytes and
/// then nothing; `/garbage` completes its TLS handshake, reads the request
/// and answers in cleartext on the raw socket.
const FAULTY: &str = r#"
import http.server, os, socket, ssl, struct, sys, time
cert, key, log = sys.argv[1], sys.argv[2], sys.argv[3]
def reset(handler):
    # Closed with a zero linger time: a reset, not a FIN. The file
    # objects hold the socket open until they are closed too.
    handler.wfile.flush()
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.rfile.close()
    handler.wfile.close()
    handler.connection.close()
    handler.close_connection = True
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        parts = self.path.split("/")
        if parts[1] == "reset":
            self.send_response(200)
            self.send_header("content-length", "10000000")
            self.end_headers()
            self.wfile.write(b"x" * int(parts[2]))
            reset(self)
        elif parts[1] == "stall":
            self.send_response(200)
            self.send_header("content-length", parts[2])
            self.end_headers()
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(60)
        elif parts[1] == "garbage":
            raw = socket.socket(fileno=os.dup(self.connection.fileno()))
            raw.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine")
            time.sleep(1)
            raw.close()
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"fine")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

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

struct Upstream(Child, u16);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A home whose `local` grant names the faulty upstream, with
/// `proxy_extra` in its `[proxy]` table.
fn setup(proxy_extra: &str) -> (TestHome, Upstream) {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let (child, port, ca, _): (Child, u16, PathBuf, PathBuf) =
        common::start_tls_python(home.path.parent().unwrap(), FAULTY);
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
    (home, Upstream(child, port))
}

/// Runs the child on `paths` of the upstream; its output lines.
fn run_child(home: &TestHome, upstream: &Upstream, paths: &[&str]) -> Vec<String> {
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("https://localhost:{}{p}", upstream.1))
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
