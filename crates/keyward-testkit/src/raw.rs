//! A raw upstream: reads one HTTP/1.1 request per connection and answers
//! with exactly the bytes a test wants, so it can misbehave the way no
//! well-behaved server library would (compress anyway, odd reason
//! phrases, 1xx and 101 heads, fragmented WebSocket frames).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use keyward_proxy::ServiceIdentity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as a raw upstream read it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
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

/// How a [`RawUpstream`] answers: the exact bytes to write back.
pub type RawHandler = Arc<dyn Fn(&RawRequest) -> Vec<u8> + Send + Sync>;

/// An upstream that reads one request per connection and answers with the
/// bytes `handler` returns, then closes. Everything it received is kept.
pub struct RawUpstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Wrap = Box<
    dyn Fn(tokio::net::TcpStream) -> Pin<Box<dyn Future<Output = Option<Box<dyn Io>>> + Send>>
        + Send
        + Sync,
>;

impl RawUpstream {
    /// Over TLS presenting `identity` (ALPN http/1.1).
    pub async fn tls(identity: &ServiceIdentity, handler: RawHandler) -> Self {
        let cfg = identity
            .server_config(&[b"http/1.1"])
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Self::start(
            handler,
            Box::new(move |tcp| {
                let acceptor = acceptor.clone();
                Box::pin(async move {
                    acceptor
                        .accept(tcp)
                        .await
                        .ok()
                        .map(|tls| Box::new(tls) as Box<dyn Io>)
                })
            }),
        )
        .await
    }

    /// In clear.
    pub async fn plain(handler: RawHandler) -> Self {
        Self::start(
            handler,
            Box::new(|tcp| Box::pin(async move { Some(Box::new(tcp) as Box<dyn Io>) })),
        )
        .await
    }

    /// The complete requests it read, in order.
    pub fn received(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every byte the upstream read, including requests cut off midway.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn start(handler: RawHandler, wrap: Wrap) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let seen: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (record, raw_record) = (seen.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Some(mut io) = wrap(tcp).await else {
                    continue;
                };
                let (handler, record, raw) = (handler.clone(), record.clone(), raw_record.clone());
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let received = read_request(&mut io, &mut bytes).await;
                    raw.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&bytes);
                    let Some(received) = received else {
                        return;
                    };
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(received.clone());
                    let reply = handler(&received);
                    let _ = io.write_all(&reply).await;
                    let _ = io.shutdown().await;
                });
            }
        });
        Self { port, seen, raw }
    }
}

/// Reads one request; every byte read goes into `all` as well.
async fn read_request(io: &mut Box<dyn Io>, all: &mut Vec<u8>) -> Option<RawRequest> {
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: nothing of the body is read early.
    while !all.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        all.push(byte[0]);
    }
    let head = String::from_utf8_lossy(all).into_owned();
    let mut received = RawRequest {
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

/// A complete HTTP/1.1 response with a body of known length, closing.
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
