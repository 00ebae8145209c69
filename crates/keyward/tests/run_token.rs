//! The run token is a secret like any other: a child that puts it (raw or
//! encoded) into a header, the URL or a body is refused (403 `run_token`)
//! on every way in, the upstream never reads it, and it is in no file of
//! the home (evidence, daemon log). Real daemon, real HTTPS echo upstream,
//! real children (python3, curl).

mod common;

use std::time::Duration;

use common::upstream::{Upstream, setup};
use common::{TestHome, json, wait_for};

/// The attacks every test performs, by name (what the child prints).
const ATTACKS: [&str; 6] = ["REFERER", "ORIGIN", "CUSTOM", "BASIC", "QUERY", "BODY"];

/// Asserts the child's report: each attack refused with the documented
/// rule, the ordinary request answered 200.
fn assert_refused(stdout: &str, attacks: &[&str]) {
    for name in attacks {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"));
        assert!(
            line.starts_with(&format!("{name} 403 run_token")),
            "{line}\n{stdout}"
        );
    }
    assert!(stdout.contains("\nOK 200"), "{stdout}");
}

/// Asserts the upstream never read the token (it logs every request it
/// read, cut-off bodies included) and no file of the home holds it.
fn assert_nowhere(home: &TestHome, upstream: &Upstream, token: &str) {
    assert_eq!(token.len(), 64, "{token}");
    upstream.settle();
    let seen = serde_json::to_string(&upstream.received()).unwrap();
    assert!(
        seen.contains("\"/echo?x=1\""),
        "the ordinary request: {seen}"
    );
    assert!(
        !seen.to_ascii_lowercase().contains(token),
        "the upstream read the run token: {seen}"
    );
    for needle in [token.to_owned(), token.to_ascii_uppercase()] {
        assert!(
            home.files_containing(&needle).is_empty(),
            "the run token is in {:?}",
            home.files_containing(&needle)
        );
    }
}

/// The `egress` records, once at least `n` are on record.
fn egress_records(home: &TestHome, n: usize) -> Vec<serde_json::Value> {
    assert!(
        wait_for(Duration::from_secs(10), || home
            .log()
            .matches("egress")
            .count()
            >= n),
        "{}",
        home.log()
    );
    let tail = home.run(&["audit", "tail", "--kind", "egress", "--json", "-n", "1000"]);
    tail.stdout.lines().map(json).collect()
}

/// Asserts one `run_token` refusal record per attack, `via` the way in.
fn assert_recorded(home: &TestHome, via: &str, attacks: usize) {
    let records = egress_records(home, attacks + 1);
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["data"]["blocked"] == "run_token")
        .collect();
    assert_eq!(refused.len(), attacks, "{records:#?}");
    for r in refused {
        assert_eq!(r["data"]["via"], via, "{r}");
        assert_eq!(r["data"]["response"]["status"], 403, "{r}");
        assert_eq!(r["data"]["fault"], "child", "{r}");
    }
}

/// Python: `send(name, path, headers, body)` prints `NAME STATUS RULE`.
const PY_SEND: &str = r#"
import base64, json, os, sys, urllib.request, urllib.error
def send(opener, name, url, headers={}, data=None):
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        r = opener.open(req)
        print(name, r.status, "-")
    except urllib.error.HTTPError as e:
        print(name, e.code, e.headers.get("x-keyward-blocked"), e.read().decode().strip())
def attacks(opener, base, token, send_to):
    send(opener, "REFERER", send_to + "/echo", {"Referer": base + "/page"})
    send(opener, "ORIGIN", send_to + "/echo", {"Origin": base})
    send(opener, "CUSTOM", send_to + "/echo", {"X-Leak": token.upper()})
    send(opener, "BASIC", send_to + "/echo", {"X-Auth": "Basic " + base64.b64encode(("run:" + token).encode()).decode()})
    send(opener, "QUERY", send_to + "/echo?t=" + "".join("%%%02X" % b for b in token.encode()))
    send(opener, "BODY", send_to + "/echo", {"content-type": "application/json"}, json.dumps({"note": token}).encode())
    send(opener, "OK", send_to + "/echo?x=1", {"Referer": "https://example.test/page", "content-type": "application/json"}, b'{"model": "m"}')
"#;

#[test]
fn the_run_token_never_leaves_a_base_url_endpoint() {
    let (home, upstream) = setup("");
    let config = home.file("keyward.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("base_url_env = \"LOCAL_BASE_URL\"\n");
    std::fs::write(&config, text).unwrap();
    let reload = home.http("POST", "/v1/reload", None);
    assert_eq!(reload.0, 200, "{reload:?}");
    let script = format!(
        r#"{PY_SEND}
base = os.environ["LOCAL_BASE_URL"]
token = base.split("/r/")[1].split("/")[0]
print("TOKEN", token)
attacks(urllib.request.build_opener(urllib.request.ProxyHandler({{}})), base, token, base)
"#
    );
    let out = home.run(&[
        "run",
        "--base-url",
        "--grant",
        "local",
        "--",
        "python3",
        "-c",
        &script,
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN "))
        .unwrap()
        .to_owned();
    assert_refused(&out.stdout, &ATTACKS);
    assert!(
        out.stdout
            .contains("REFERER 403 run_token keyward refused this request: the referer header carries this run's token"),
        "{}",
        out.stdout
    );
    assert_recorded(&home, "base_url", ATTACKS.len());
    assert_nowhere(&home, &upstream, &token);
}

#[test]
fn the_run_token_never_leaves_through_the_forward_proxy() {
    let (home, upstream) = setup("");
    // curl as the child: HTTPS_PROXY holds the token; HTTP/1.1 and HTTP/2
    // to the proxy, intercepted TLS to the upstream.
    let script = format!(
        r#"T=${{HTTPS_PROXY#http://run:}}; T=${{T%@*}}
echo "TOKEN $T"
U=https://localhost:{port}
B="http://127.0.0.1/r/$T/local"
c() {{ name=$1; shift; curl -s -o /dev/null -w "$name %{{http_code}} %header{{x-keyward-blocked}}\n" "$@"; }}
c REFERER -H "Referer: $B/page" $U/echo
c ORIGIN -H "Origin: $B" $U/echo
c CUSTOM -H "X-Leak: $(echo $T | tr a-f A-F)" $U/echo
c BASIC -H "X-Auth: Basic $(printf 'run:%s' $T | base64 -w0)" $U/echo
c QUERY "$U/echo?t=$(printf %s $T | od -An -tx1 | tr -d ' \n' | sed 's/../%&/g')"
c BODY -H 'content-type: application/json' -d "{{\"note\": \"$T\"}}" $U/echo
c H2REFERER --http2 -H "Referer: $B/page" $U/echo
c H2BODY --http2 -d "{{\"note\": \"$T\"}}" $U/echo
c OK -H 'Referer: https://example.test/page' -d '{{"model": "m"}}' "$U/echo?x=1"
# An agent hook asking about a command that holds the token, upper-cased
# and glued to a word: evidence records it without the token.
UP=$(echo $T | tr a-f A-F)
curl -s --unix-socket "$KEYWARD_HOME/keyward.sock" -H 'content-type: application/json' \
  -d "{{\"action_type\": \"execute_command\", \"target\": \"curl -H 'X-Leak: x_$UP' https://example.test/\"}}" \
  -o /dev/null -w "EVALUATE %{{http_code}}\n" http://keyward/v1/evaluate
"#,
        port = upstream.port
    );
    let out = home.run(&["run", "--grant", "local", "--", "sh", "-c", &script]);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN "))
        .unwrap()
        .to_owned();
    let mut attacks = ATTACKS.to_vec();
    attacks.extend(["H2REFERER", "H2BODY"]);
    assert_refused(&out.stdout, &attacks);
    assert!(out.stdout.contains("EVALUATE 200"), "{}", out.stdout);
    let decisions = home.run(&["audit", "tail", "--kind", "decision", "--json", "-n", "10"]);
    assert!(
        decisions.stdout.contains("x_[REDACTED]"),
        "{}",
        decisions.stdout
    );
    assert_recorded(&home, "proxy", attacks.len());
    assert_nowhere(&home, &upstream, &token);
}

#[test]
fn the_run_token_never_leaves_through_a_broker_stream() {
    let (home, upstream) = setup("");
    // A brokered program's environment holds no token; one that learned
    // it anyway (here: made its own run and broker) still cannot send it.
    let create = home.http(
        "POST",
        "/v1/runs",
        Some(r#"{"grants":["local"],"broker":true}"#),
    );
    assert_eq!(create.0, 200, "{create:?}");
    let created = json(&create.1);
    let run_id = created["run_id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    // The program speaks HTTP/1.1 on its broker's streams; `send_to` is
    // any base, the Host header names the grant's host.
    let script = format!(
        r#"{PY_SEND}
import http.client, socket
sock_path, run_id, token, host = sys.argv[1:5]
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
admin = socket.socket(socket.AF_UNIX)
admin.connect(sock_path)
body = json.dumps({{"token": token}}).encode()
req = f"POST /v1/runs/{{run_id}}/broker HTTP/1.1\r\nhost: keyward\r\ncontent-type: application/json\r\ncontent-length: {{len(body)}}\r\nconnection: close\r\n\r\n".encode() + body
socket.send_fds(admin, [req], [theirs.fileno()])
theirs.close()
print("ATTACH", admin.recv(65536).split(b"\r\n")[0].decode())
class BrokerConnection(http.client.HTTPConnection):
    def connect(self):
        ours.send(b"\x01")
        msg, fds, _, _ = socket.recv_fds(ours, 2, 1)
        self.sock = socket.socket(fileno=fds[0])
class BrokerHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(BrokerConnection, req)
opener = urllib.request.build_opener(BrokerHandler(), urllib.request.ProxyHandler({{}}))
attacks(opener, "http://127.0.0.1/r/" + token + "/local", token, "http://" + host)
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .arg(home.socket())
        .arg(run_id)
        .arg(token)
        .arg(format!("localhost:{}", upstream.port))
        .output()
        .unwrap();
    let out = common::Run::from(out);
    assert_eq!(out.code, 0, "{out:?}\n{}", home.log());
    assert!(out.stdout.contains("ATTACH HTTP/1.1 200"), "{out:?}");
    assert_refused(&out.stdout, &ATTACKS);
    assert_recorded(&home, "broker", ATTACKS.len());
    assert_nowhere(&home, &upstream, token);
}
