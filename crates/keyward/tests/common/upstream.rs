//! The HTTPS echo upstream most run tests talk to, and a home with a
//! `local` grant for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_proxy::ServiceIdentity;
use keyward_testkit::{Answer, Origin};

use super::TestHome;

pub const SECRET: &str = "kw-run-SECRET-7d2e91c4aa";

/// The HTTPS echo upstream (the test kit's origin, on a runtime of its
/// own): it echoes the request (method, path, headers, body) as JSON with
/// the `Authorization` it got in `x-echo-auth`, and keeps each request so
/// a test can see what the upstream received (the echo itself comes back
/// scrubbed). `/big/N` answers N bytes; `/status/N/...` echoes with
/// status N; `/slow/...` echoes after 2 s.
pub struct Upstream {
    origin: Origin,
    /// Its CA and leaf: another origin a test starts with it is trusted
    /// by the same `proxy.upstream_ca`.
    pub identity: ServiceIdentity,
    pub port: u16,
    /// The test CA (0644), for the daemon's `proxy.upstream_ca`.
    pub ca: PathBuf,
}

impl Upstream {
    /// Starts the echo upstream with a fresh test CA (written into `dir`)
    /// and a leaf for localhost.
    pub fn start(dir: &Path) -> Self {
        let identity = ServiceIdentity::new("localhost").unwrap();
        let origin = Origin::builder()
            .identity(identity.clone())
            .route("/big/", |req| Answer::repeat(path_number(&req.path)))
            .route("/status/", |req| {
                Answer::echo(req).with_status(path_number(&req.path) as u16)
            })
            // The request is on record at once; only the answer is slow.
            .route("/slow/", |req| {
                Answer::echo(req).delay(Duration::from_secs(2))
            })
            .start_background();
        let ca = origin.write_ca(dir);
        Self {
            port: origin.port(),
            identity,
            ca,
            origin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.origin.url(path)
    }

    /// What the upstream received, one JSON object (`method`, `path`,
    /// `headers`, `body`) per request, in order of arrival.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.origin.received_json()
    }

    /// Waits until no request the upstream started to read is still
    /// missing from [`Upstream::received`].
    pub fn settle(&self) {
        self.origin.settle();
    }
}

/// N in `/word/N/...`.
fn path_number(path: &str) -> u64 {
    path.split('/')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a number in the path")
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
