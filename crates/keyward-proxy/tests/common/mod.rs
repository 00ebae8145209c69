//! What the proxy's integration tests share: a run authority with one
//! fixed run, a proxy on loopback, the test kit's raw loopback upstreams
//! (TLS or plain) that answer with exactly the bytes a test wants (so they
//! can misbehave: compress anyway, echo and store values, send trailers,
//! odd reason phrases, 1xx and 101 responses, fragmented WebSocket
//! messages), and a
//! python3 child that talks to the proxy the way an attacker would, with
//! raw bytes, printing everything it gets back.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use keyward_api::Network;
use keyward_proxy::{
    CertificateAuthority, Credential, Proxy, ProxyOptions, RunContext, ServiceIdentity,
};
pub use keyward_testkit::FixedAuthority;
use tokio::net::TcpListener;

pub const TOKEN: &str = "attack-test-token";
/// Has characters that percent-encoding and both base64 alphabets change.
pub const SECRET: &str = "kw/SECRET+v4lue=7d2e?x~Q";

/// A header credential (`Authorization: Bearer SECRET`) for `hosts`.
pub fn bearer(hosts: &[&str]) -> Credential {
    keyward_testkit::bearer_credential("api", hosts, SECRET)
}

/// A temporary directory with an upstream identity (a test CA and a leaf
/// for localhost) and, once started, a proxy trusting that CA.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub identity: ServiceIdentity,
    pub upstream_ca: PathBuf,
    pub proxy_port: u16,
}

impl Harness {
    pub fn new() -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let identity = ServiceIdentity::for_names(&["localhost", "127.0.0.1"]).unwrap();
        let upstream_ca = dir.path().join("upstream-ca.pem");
        std::fs::write(&upstream_ca, &identity.ca_pem).unwrap();
        Self {
            dir,
            identity,
            upstream_ca,
            proxy_port: 0,
        }
    }

    /// Starts the proxy for one run holding `credentials`.
    pub async fn start_proxy(&mut self, credentials: Vec<Credential>, options: ProxyOptions) {
        let ca =
            Arc::new(CertificateAuthority::load_or_create(&self.dir.path().join("ca")).unwrap());
        let ctx = RunContext::new(
            "run_attack".into(),
            Network::Permissive,
            vec![],
            credentials,
        );
        let proxy = Proxy::with_options(
            ca,
            Arc::new(FixedAuthority::new(TOKEN, ctx)),
            std::slice::from_ref(&self.upstream_ca),
            options,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.proxy_port = listener.local_addr().unwrap().port();
        tokio::spawn(Arc::new(proxy).serve(listener, std::future::pending()));
    }

    /// The CA a run's child trusts for intercepted TLS.
    pub fn proxy_ca(&self) -> PathBuf {
        self.dir.path().join("ca/public/ca.pem")
    }

    /// Sends `request` through the proxy from a python3 child, through a
    /// CONNECT tunnel to `tunnel` (TLS, ALPN http/1.1) or, without one, as
    /// a plain forward request; returns every byte the child received
    /// (after the tunnel's 200, or the refusal of the CONNECT).
    pub async fn child(&self, tunnel: Option<&str>, request: &[u8]) -> Vec<u8> {
        let out = tokio::process::Command::new("python3")
            .args(["-c", RAW_CLIENT])
            .arg(self.proxy_port.to_string())
            .arg(TOKEN)
            .arg(self.proxy_ca())
            .arg(tunnel.unwrap_or(""))
            .arg(base64::engine::general_purpose::STANDARD.encode(request))
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// The attacker child: raw bytes through the proxy, all replies printed.
const RAW_CLIENT: &str = r#"
import base64, socket, ssl, sys
proxy_port, token, ca, tunnel, request = sys.argv[1:6]
request = base64.b64decode(request)
auth = ("Proxy-Authorization: Bearer " + token + "\r\n").encode()
s = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=20)
if tunnel:
    s.sendall(b"CONNECT " + tunnel.encode() + b" HTTP/1.1\r\nHost: " + tunnel.encode() + b"\r\n" + auth + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(1)
        if not c:
            break
        head += c
    if not head.startswith(b"HTTP/1.1 200"):
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(head) < head.index(b"\r\n\r\n") + 4 + length:
            c = s.recv(65536)
            if not c:
                break
            head += c
        sys.stdout.buffer.write(head)
        sys.exit(0)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=tunnel.rsplit(":", 1)[0])
else:
    head, rest = request.split(b"\r\n\r\n", 1)
    request = head + b"\r\n" + auth + b"\r\n" + rest
s.sendall(request)
out = b""
while True:
    try:
        c = s.recv(65536)
    except (socket.timeout, ssl.SSLError, ConnectionResetError):
        break
    if not c:
        break
    out += c
sys.stdout.buffer.write(out)
"#;

/// The raw upstreams (exact bytes back, everything read kept) are the
/// test kit's. (Not every test binary uses them.)
#[allow(unused_imports)]
pub use keyward_testkit::{RawHandler as Handler, RawRequest as Received, RawUpstream, response};

/// The secret the upstream received in `Authorization: Bearer …`, if any.
pub fn injected(received: &Received) -> Option<String> {
    received
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Encodings of `secret` a server might send back: base64 (standard and
/// URL-safe, after 0, 1 and 2 bytes of other data), hex in both cases,
/// percent-encoded.
pub fn encodings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for prefix in [&b""[..], b"a", b"ab"] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"!end");
            out.push(engine.encode(&data));
        }
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_uppercase());
    out.push(hex);
    for upper in [true, false] {
        let percent: String = secret
            .iter()
            .map(|&b| match (b.is_ascii_alphanumeric(), upper) {
                (true, _) => (b as char).to_string(),
                (false, true) => format!("%{b:02X}"),
                (false, false) => format!("%{b:02x}"),
            })
            .collect();
        out.push(percent);
    }
    out
}

/// Asserts that nothing the child received holds the secret, raw or in
/// any of [`encodings`].
pub fn assert_no_secret(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(
        !contains(out, SECRET.as_bytes()),
        "the child got the secret: {text}"
    );
    for form in encodings(SECRET.as_bytes()) {
        assert!(
            !contains(out, form.as_bytes()),
            "the child got an encoded secret {form}: {text}"
        );
    }
}
