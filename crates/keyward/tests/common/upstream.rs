//! The HTTPS echo upstream most run tests talk to, and a home with a
//! `local` grant for it.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use super::{TestHome, json, wait_for};

pub const SECRET: &str = "kw-run-SECRET-7d2e91c4aa";

/// A python HTTPS server that echoes the request (path, headers, body) and
/// appends each request's headers to a log, so a test can see what the
/// upstream received (the echo itself comes back scrubbed). `/big/N`
/// answers N bytes and notes its path in `<log>.big` as it starts;
/// `/status/N/...` echoes with status N; `/slow/...` echoes after 2 s.
pub const ECHO_SERVER: &str = r#"
import http.server, ssl, json, sys, time
cert, key, log = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self):
        if self.path.startswith("/big/"):
            with open(log + ".big", "a") as f:
                f.write(self.path + "\n")
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            while size > 0:
                self.wfile.write(chunk[:size])
                size -= len(chunk)
            return
        if self.path.startswith("/slow/"):
            time.sleep(2)
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        rec = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        out = json.dumps(rec).encode()
        self.send_response(int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo-auth", self.headers.get("authorization") or "")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = reply
    do_POST = reply
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

pub struct Upstream {
    pub child: Child,
    pub port: u16,
    pub ca: PathBuf,
    pub log: PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Upstream {
    /// Starts the echo server with a fresh test CA and a leaf for localhost.
    pub fn start(dir: &Path) -> Self {
        let (child, port, ca, log) = super::start_tls_python(dir, ECHO_SERVER);
        Self {
            child,
            port,
            ca,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// What the upstream received, one JSON object per request.
    /// Complete records only: the server may be writing the last line.
    pub fn received(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete.lines().map(json).collect()
    }

    /// Waits until the server has finished writing its log.
    pub fn settle(&self) {
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&self.log).is_ok_and(|t| t.is_empty() || t.ends_with('\n'))
        });
    }
}

/// A home with a `local` grant for localhost and the upstream's CA trusted;
/// `proxy_extra` goes into the `[proxy]` table.
pub fn setup(proxy_extra: &str) -> (TestHome, Upstream) {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let upstream = Upstream::start(home.path.parent().unwrap());
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[proxy]\nupstream_ca = [\"{}\"]\n{proxy_extra}\n\n[grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\nplaceholder_env = \"LOCAL_TOKEN\"\n",
            upstream.ca.display(),
            upstream.port
        ),
    )
    .unwrap();
    let set = home.run_stdin(&["secret", "set", "local-token"], SECRET);
    assert_eq!(set.code, 0, "{set:?}");
    (home, upstream)
}

/// Replaces the home's key-file vault with a passphrase one (`pw`)
/// holding the same secret; the daemon is stopped.
pub fn use_passphrase_vault(home: &TestHome) {
    assert_eq!(home.run(&["daemon", "stop"]).code, 0);
    std::fs::remove_dir_all(home.file("vault")).unwrap();
    let init = home.run_stdin(&["vault", "init", "--passphrase"], "pw\n");
    assert_eq!(init.code, 0, "{init:?}");
    let set = home.run_stdin(&["secret", "set", "local-token"], SECRET);
    assert_eq!(set.code, 0, "{set:?}");
}

/// Points the grant `local` at a host nobody serves and reloads, so that a
/// run created now has no authority toward the upstream. Returns the
/// config's path and its text before the change.
pub fn point_grant_elsewhere(home: &TestHome) -> (PathBuf, String) {
    let config = home.file("keyward.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        original.replace("hosts = [\"localhost:", "hosts = [\"nowhere.invalid:"),
    )
    .unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    (config, original)
}

/// `keyward run [--grant G]... -- sh -c SCRIPT`.
pub fn run_sh(home: &TestHome, grants: &[&str], script: &str) -> super::Run {
    let mut args = vec!["run"];
    for g in grants {
        args.extend(["--grant", g]);
    }
    args.extend(["--", "sh", "-c", script]);
    home.run(&args)
}

pub fn proxy_port(home: &TestHome) -> u16 {
    std::fs::read_to_string(home.file("proxy.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
