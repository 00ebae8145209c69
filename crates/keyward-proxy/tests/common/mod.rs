//! What the proxy's integration tests share: a run authority with one
//! fixed run, a proxy on loopback, raw loopback upstreams (TLS or plain)
//! that answer with exactly the bytes a test wants (so they can misbehave:
//! compress anyway, echo and store values, send trailers, odd reason
//! phrases, 1xx and 101 responses, fragmented WebSocket messages), and a
//! python3 child that talks to the proxy the way an attacker would, with
//! raw bytes, printing everything it gets back.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine;
use keyward_api::Network;
use keyward_proxy::{
    CertificateAuthority, Credential, Proxy, ProxyOptions, RunContext, ServiceIdentity,
};
pub use keyward_testkit::FixedAuthority;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// One request as a raw upstream read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value (first one, any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The request target (`/path?query`).
    pub fn target(&self) -> String {
        self.head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }
}

pub type Handler = Arc<dyn Fn(&Received) -> Vec<u8> + Send + Sync>;

/// An upstream that reads one request per connection and answers with the
/// bytes `handler` returns, then closes. Everything it received is kept.
pub struct RawUpstream {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Received>>>,
    /// Every byte read on every connection, complete requests or not.
    pub raw: Arc<Mutex<Vec<u8>>>,
}

impl RawUpstream {
    /// Over TLS with the harness's identity (`alpn` http/1.1).
    pub async fn tls(harness: &Harness, handler: Handler) -> Self {
        let cfg = harness.identity.server_config(&[b"http/1.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Self::start(handler, move |tcp| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                acceptor
                    .accept(tcp)
                    .await
                    .ok()
                    .map(|tls| Box::new(tls) as Box<dyn Io>)
            })
        })
        .await
    }

    /// In clear.
    pub async fn plain(handler: Handler) -> Self {
        Self::start(handler, |tcp| {
            Box::pin(async move { Some(Box::new(tcp) as Box<dyn Io>) })
        })
        .await
    }

    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Every byte the upstream read, including requests cut off midway.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap().clone()
    }

    async fn start<F>(handler: Handler, wrap: F) -> Self
    where
        F: Fn(tokio::net::TcpStream) -> Pin<Box<dyn Future<Output = Option<Box<dyn Io>>> + Send>>
            + Send
            + Sync
            + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
        let record = seen.clone();
        let raw_record = raw.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Some(mut io) = wrap(tcp).await else {
                    continue;
                };
                let handler = handler.clone();
                let record = record.clone();
                let raw = raw_record.clone();
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let received = read_request(&mut io, &mut bytes).await;
                    raw.lock().unwrap().extend_from_slice(&bytes);
                    let Some(received) = received else {
                        return;
                    };
                    record.lock().unwrap().push(received.clone());
                    let reply = handler(&received);
                    let _ = io.write_all(&reply).await;
                    let _ = io.shutdown().await;
                });
            }
        });
        Self { port, seen, raw }
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads one request; every byte read goes into `all` as well.
async fn read_request(io: &mut Box<dyn Io>, all: &mut Vec<u8>) -> Option<Received> {
    let mut byte = [0u8; 1];
    while !all.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        all.push(byte[0]);
    }
    let head = String::from_utf8_lossy(all).into_owned();
    let mut received = Received {
        head,
        body: Vec::new(),
    };
    let length: usize = received
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = vec![0u8; 65536];
    while received.body.len() < length {
        let want = (length - received.body.len()).min(chunk.len());
        let n = io.read(&mut chunk[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        received.body.extend_from_slice(&chunk[..n]);
        all.extend_from_slice(&chunk[..n]);
    }
    Some(received)
}

/// A complete HTTP/1.1 response with a body of known length.
pub fn response(status_line: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status_line}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

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
