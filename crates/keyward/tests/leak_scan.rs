//! The leak scan: a daemon logging at `RUST_LOG=trace` is driven through
//! every path that touches a secret, then everything a person or a child
//! could read is searched for each secret in every encoding the scrubber
//! knows (and JSON-escaped). Any hit fails the test: a `debug!` (or any
//! other level) that prints a credential, an error that quotes one, an
//! evidence record or a file that holds one. The scanner itself is tested
//! against a deliberate leak in each encoding
//! (`the_scanner_finds_a_planted_secret_in_every_encoding`), so the scan
//! cannot pass by finding nothing; and end to end, a deliberate
//! `tracing::trace!` of a secret's hex in the secret-set route makes
//! `no_secret_shows_anywhere_at_trace_level` fail, naming `daemon.log`
//! and the byte where each secret shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{TestHome, wait_for};
use keyward_testkit::{Answer, Origin, Received};
use serde_json::json;

/// One secret per injection kind, and the value the header secret is
/// rotated to. `+`, `/` and `=` make every encoding differ from the raw
/// text.
const HEADER_SECRET: &str = "kw-LEAK-hdr+/=9f3a71c2e8d4";
const BASIC_SECRET: &str = "kw-LEAK-basic/+=5c0b9e2a71";
const QUERY_SECRET: &str = "kw-LEAK-query=/+8e61d3f0b2";
const ROTATED_SECRET: &str = "kw-LEAK-rotated+/=44a9c7e13f";
const ALL_SECRETS: [&str; 4] = [HEADER_SECRET, BASIC_SECRET, QUERY_SECRET, ROTATED_SECRET];

/// The run's child: three phases of requests, each after the test says
/// go (`go1`..`go3` in its directory), each line of output `label status`.
/// Between phases the test seals, unseals and rotates; at the end the
/// child waits (`go4`) while the test reads its `/proc` entries.
const CHILD: &str = r#"
import base64, json, os, sys, time, urllib.request, urllib.error
d, hdr, basic, query = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
open(os.path.join(d, "pid"), "w").write(str(os.getpid()))
def wait(step):
    while not os.path.exists(os.path.join(d, "go%d" % step)):
        time.sleep(0.05)
def req(label, url, headers=None, data=None):
    try:
        r = urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}, data=data), timeout=30)
        body = r.read()
        print(label, r.status, json.dumps(body.decode(errors="replace")), json.dumps(dict(r.headers)))
    except urllib.error.HTTPError as e:
        print(label, e.code, json.dumps(e.read().decode(errors="replace")), json.dumps(dict(e.headers)))
    except Exception as e:
        print(label, "error", json.dumps(repr(e)))
    sys.stdout.flush()
ph = os.environ["HDR_TOKEN"]
h = "https://localhost:%d" % hdr
wait(1)
req("header", h + "/echo")
req("placeholder-header", h + "/echo", {"X-Token": ph})
req("placeholder-url", h + "/echo?tok=" + ph)
req("placeholder-body", h + "/echo", {"content-type": "application/json"}, json.dumps({"t": ph}).encode())
auth = base64.b64encode(("me:" + os.environ["BASIC_TOKEN"]).encode()).decode()
req("basic", "https://localhost:%d/echo" % basic, {"Authorization": "Basic " + auth})
req("query", "https://localhost:%d/echo?x=1&api_key=%s" % (query, os.environ["QUERY_TOKEN"]))
req("upstream-401", h + "/status/401")
req("upstream-500", h + "/status/500")
req("upstream-reset", h + "/reset")
req("blocked-wrong-host", "https://127.0.0.1:%d/echo" % hdr, {"X-Token": ph})
req("refused-cleartext", "http://localhost:%d/echo" % hdr, {"X-Token": ph})
open(os.path.join(d, "done1"), "w").close()
wait(2)
req("sealed", h + "/echo", {"X-Token": ph})
open(os.path.join(d, "done2"), "w").close()
wait(3)
req("rotated", h + "/echo", {"X-Token": ph})
open(os.path.join(d, "done3"), "w").close()
wait(4)
"#;

/// What each request of [`CHILD`] must get, in order.
const EXPECTED: &[(&str, &str)] = &[
    ("header", "200"),
    ("placeholder-header", "200"),
    ("placeholder-url", "200"),
    ("placeholder-body", "200"),
    ("basic", "200"),
    ("query", "200"),
    ("upstream-401", "401"),
    ("upstream-500", "500"),
    ("upstream-reset", "error"),
    ("blocked-wrong-host", "403"),
    ("refused-cleartext", "403"),
    ("sealed", "423"),
    ("rotated", "200"),
];

/// Every form of `secret` the scan looks for, named: raw; JSON-escaped
/// (with `/` escaped too, as some encoders do); base64 standard and
/// URL-safe, the characters that depend on the secret alone at each of the
/// three alignments it can take inside a longer text; hex in both cases;
/// percent-encoding keeping `-._~` or nothing, in both cases.
fn encodings(secret: &str) -> Vec<(String, Vec<u8>)> {
    let raw = secret.as_bytes();
    let mut forms = vec![
        ("raw".to_owned(), raw.to_vec()),
        (
            "json".to_owned(),
            serde_json::to_string(secret)
                .unwrap()
                .trim_matches('"')
                .into(),
        ),
        (
            "json-slash".to_owned(),
            serde_json::to_string(secret)
                .unwrap()
                .trim_matches('"')
                .replace('/', "\\/")
                .into(),
        ),
    ];
    for (name, engine) in [
        ("base64", base64::engine::general_purpose::STANDARD_NO_PAD),
        (
            "base64url",
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(raw);
            let text = engine.encode(&shifted);
            let first = (offset * 8).div_ceil(6);
            let end = shifted.len() * 8 / 6;
            forms.push((
                format!("{name}@{offset}"),
                text.as_bytes()[first..end].to_vec(),
            ));
        }
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(("hex".to_owned(), hex.clone().into_bytes()));
    forms.push(("HEX".to_owned(), hex.to_ascii_uppercase().into_bytes()));
    for (name, keep) in [("percent", &b"-._~"[..]), ("percent-all", b"")] {
        for upper in [true, false] {
            let text: String = raw
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphanumeric() || keep.contains(&b) {
                        char::from(b).to_string()
                    } else if upper {
                        format!("%{b:02X}")
                    } else {
                        format!("%{b:02x}")
                    }
                })
                .collect();
            forms.push((
                format!("{name}-{}", if upper { "upper" } else { "lower" }),
                text.into_bytes(),
            ));
        }
    }
    forms
}

/// Where in `bytes` (named `source`) any of `secrets` shows, in any form:
/// one line per hit.
fn scan(source: &str, bytes: &[u8], secrets: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for secret in secrets {
        for (form, needle) in encodings(secret) {
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                hits.push(format!("{source}: {form} of {secret:?} at byte {at}"));
            }
        }
    }
    hits
}

/// Every file under `dir`, but the vault's snapshots (encrypted; they
/// hold the secrets by design).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let file_type = entry.file_type().unwrap();
        if file_type.is_dir() {
            files_under(&path, out);
        } else if file_type.is_file()
            && !(path.parent().is_some_and(|p| p.ends_with("vault"))
                && path.extension().is_some_and(|e| e == "age"))
        {
            out.push(path);
        }
    }
}

/// An HTTPS upstream (the test kit's origin) that answers with what it
/// received (path, headers, body) and each received value again in
/// base64, hex and percent encoding, so the response carries the secret in
/// every form the proxy must scrub. `/status/N` answers status N;
/// `/reset` sends its head (declaring 100000 bytes), a little of its body,
/// then breaks the connection.
struct Upstream {
    _origin: Origin,
    port: u16,
    ca: PathBuf,
}

fn upstream(dir: &Path) -> Upstream {
    std::fs::create_dir_all(dir).unwrap();
    let origin = Origin::builder()
        .route("/reset", |_| Answer::bytes("partial").broken(100_000))
        .fallback(encoded_echo)
        .start_background();
    Upstream {
        port: origin.port(),
        ca: origin.write_ca(dir),
        _origin: origin,
    }
}

/// The request back, with every received value (path, body, each header
/// value) in base64 (standard; URL-safe after one byte `x`), hex and
/// percent-encoding (nothing kept but letters, digits and `_.-~`).
fn encoded_echo(req: &Received) -> Answer {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let values: Vec<&str> = [req.path.as_str(), body.as_str()]
        .into_iter()
        .chain(req.headers.iter().map(|(_, v)| v.as_str()))
        .collect();
    let percent = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut rec = req.to_json();
    rec.as_object_mut().unwrap().remove("method");
    rec["b64"] = json!(
        values
            .iter()
            .map(|v| STANDARD.encode(v))
            .collect::<Vec<_>>()
    );
    rec["b64url"] = json!(
        values
            .iter()
            .map(|v| URL_SAFE.encode(format!("x{v}")))
            .collect::<Vec<_>>()
    );
    rec["hex"] = json!(values.iter().map(hex::encode).collect::<Vec<_>>());
    rec["percent"] = json!(values.iter().map(|v| percent(v)).collect::<Vec<_>>());
    let status = req
        .path
        .strip_prefix("/status/")
        .and_then(|n| n.split('/').next()?.parse().ok())
        .unwrap_or(200);
    Answer::json(&rec)
        .with_status(status)
        .header("x-echo-auth", req.header("authorization").unwrap_or(""))
}

fn go(dir: &Path, step: usize) {
    std::fs::write(dir.join(format!("go{step}")), "").unwrap();
}

fn wait_done(dir: &Path, step: usize) {
    assert!(
        wait_for(Duration::from_secs(60), || dir
            .join(format!("done{step}"))
            .exists()),
        "the child did not finish step {step}"
    );
}

#[test]
fn no_secret_shows_anywhere_at_trace_level() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let base = home.path.parent().unwrap().to_owned();
    let (hdr, basic, query) = (
        upstream(&base.join("hdr")),
        upstream(&base.join("basic")),
        upstream(&base.join("query")),
    );
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            r#"[proxy]
upstream_ca = ["{}", "{}", "{}"]

[grants.hdr]
secret = "vault:hdr"
hosts = ["localhost:{}"]
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}
placeholder_env = "HDR_TOKEN"
substitute_body = true

[grants.basic]
secret = "vault:basic"
hosts = ["localhost:{}"]
inject = {{ basic = {{ username = "x-access-token" }} }}
placeholder_env = "BASIC_TOKEN"

[grants.query]
secret = "vault:query"
hosts = ["localhost:{}"]
inject = {{ query = "api_key" }}
placeholder_env = "QUERY_TOKEN"
"#,
            hdr.ca.display(),
            basic.ca.display(),
            query.ca.display(),
            hdr.port,
            basic.port,
            query.port
        ),
    )
    .unwrap();
    let mut cli_output = String::new();
    let mut cli = |args: &[&str], stdin: Option<&str>| {
        let run = match stdin {
            Some(input) => home.run_stdin(args, input),
            None => home.run(args),
        };
        assert_eq!(run.code, 0, "{args:?}: {run:?}\n{}", home.log());
        cli_output.push_str(&run.stdout);
        cli_output.push_str(&run.stderr);
    };
    let started = home
        .cmd(&["daemon", "start", "--detach"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    cli(&["secret", "set", "hdr"], Some(HEADER_SECRET));
    cli(&["secret", "set", "basic"], Some(BASIC_SECRET));
    cli(&["secret", "set", "query"], Some(QUERY_SECRET));

    let steps = base.join("steps");
    std::fs::create_dir_all(&steps).unwrap();
    let child = home
        .cmd(&[
            "run", "--grant", "hdr", "--grant", "basic", "--grant", "query", "--", "python3", "-c",
            CHILD,
        ])
        .args([
            steps.to_str().unwrap(),
            &hdr.port.to_string(),
            &basic.port.to_string(),
            &query.port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    go(&steps, 1);
    wait_done(&steps, 1);
    cli(&["vault", "seal"], None);
    go(&steps, 2);
    wait_done(&steps, 2);
    cli(&["vault", "unseal"], Some(""));
    cli(&["secret", "set", "hdr"], Some(ROTATED_SECRET));
    go(&steps, 3);
    wait_done(&steps, 3);

    // The child is still alive: its environment and command line.
    let pid = std::fs::read_to_string(steps.join("pid")).unwrap();
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in ["environ", "cmdline"] {
        let path = format!("/proc/{pid}/{entry}");
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.is_empty(), "{path} is readable");
        sources.push((path, bytes));
    }
    go(&steps, 4);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}\n{}", home.log());

    // Every path was taken, with the outcome it should have.
    let got: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            Some((words.next()?, words.next()?))
        })
        .collect();
    assert_eq!(got, EXPECTED, "{stdout}\n{}", home.log());
    for (label, marker) in [
        ("header", "Bearer kw_ph_"),
        ("placeholder-header", "kw_ph_"),
        ("basic", "[REDACTED]"),
        ("query", "[REDACTED]"),
        ("blocked-wrong-host", "placeholder_wrong_host"),
        ("sealed", "vault_sealed"),
        ("rotated", "Bearer kw_ph_"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap();
        assert!(line.contains(marker), "{label}: {line}");
    }

    // Evidence, as people read it.
    cli(&["audit", "tail", "-n", "100"], None);
    cli(&["audit", "tail", "-n", "100", "--json"], None);
    cli(&["audit", "verify"], None);
    // Requests still in the evidence writer's queue are on disk once the
    // daemon has stopped.
    cli(&["daemon", "stop"], None);

    sources.push(("child stdout".to_owned(), out.stdout.clone()));
    sources.push(("child stderr".to_owned(), out.stderr.clone()));
    sources.push(("CLI output".to_owned(), cli_output.into_bytes()));
    let mut files = Vec::new();
    files_under(&home.path, &mut files);
    assert!(files.iter().any(|f| f.ends_with("daemon.log")), "{files:?}");
    assert!(
        home.log().contains("TRACE"),
        "the daemon logged at trace level"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        sources.push((file.display().to_string(), bytes));
    }
    let hits: Vec<String> = sources
        .iter()
        .flat_map(|(name, bytes)| scan(name, bytes, &ALL_SECRETS))
        .collect();
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}

/// The scan is only as good as its scanner: a secret written in any of
/// the forms it knows, inside other text, into a file of a home, is
/// found; and a text without it is clean.
#[test]
fn the_scanner_finds_a_planted_secret_in_every_encoding() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.path.join("audit")).unwrap();
    for (form, needle) in encodings(HEADER_SECRET) {
        let mut text = b"2026-12-03T14:00:00Z DEBUG keyward: credential=".to_vec();
        text.extend_from_slice(&needle);
        text.extend_from_slice(b" (deliberate leak)\n");
        let file = home.path.join("audit").join("evidence-000001.jsonl");
        std::fs::write(&file, &text).unwrap();
        let mut files = Vec::new();
        files_under(&home.path, &mut files);
        let hits: Vec<String> = files
            .iter()
            .flat_map(|f| {
                scan(
                    &f.display().to_string(),
                    &std::fs::read(f).unwrap(),
                    &ALL_SECRETS,
                )
            })
            .collect();
        assert!(
            hits.iter().any(|h| h.contains(&format!(": {form} of"))),
            "a planted {form} form was not found: {hits:?}"
        );
    }
    // Encoded inside a longer text, as an `Authorization: Basic` header
    // or a base64 blob would carry it, at every alignment.
    for prefix in ["", "u", "us", "use"] {
        let blob = format!("{prefix}:{HEADER_SECRET}:tail");
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ] {
            let text = engine.encode(&blob);
            assert!(
                !scan("blob", text.as_bytes(), &[HEADER_SECRET]).is_empty(),
                "{blob:?} as {text}"
            );
        }
    }
    assert!(
        scan(
            "clean",
            b"Bearer kw_ph_0123456789abcdef [REDACTED] kw-LEAK-hdr+/=9f3a71c2e8d",
            &ALL_SECRETS
        )
        .is_empty(),
        "a text without a whole secret is clean"
    );
}
