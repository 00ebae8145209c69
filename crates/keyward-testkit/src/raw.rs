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

/// How a [`RawUpstream`] ends a connection after its answer's bytes.
#[derive(Debug, Clone)]
pub enum RawEnd {
    /// An orderly close (TLS close_notify, then FIN).
    Close,
    /// A TCP reset (`SO_LINGER` 0), nothing more of TLS.
    Reset,
    /// Nothing more: the connection stays open until the peer ends it.
    Stall,
    /// These bytes in clear on the TCP socket under the TLS session, then
    /// it waits for the peer to end the connection.
    Cleartext(Vec<u8>),
}

/// A [`RawHandler`] that also says how the connection ends.
pub type RawEndingHandler = Arc<dyn Fn(&RawRequest) -> (Vec<u8>, RawEnd) + Send + Sync>;

/// An upstream that reads one request per connection and answers with the
/// bytes `handler` returns, then closes. Everything it received is kept.
pub struct RawUpstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

/// A connection, TLS or not, with its TCP socket at hand (for resets and
/// bytes in clear under TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&mut self) -> &mut tokio::net::TcpStream;
}

impl Io for tokio::net::TcpStream {
    fn tcp(&mut self) -> &mut tokio::net::TcpStream {
        self
    }
}

impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn tcp(&mut self) -> &mut tokio::net::TcpStream {
        self.get_mut().0
    }
}

type Wrap = Box<
    dyn Fn(tokio::net::TcpStream) -> Pin<Box<dyn Future<Output = Option<Box<dyn Io>>> + Send>>
        + Send
        + Sync,
>;

impl RawUpstream {
    /// Over TLS presenting `identity` (ALPN http/1.1).
    pub async fn tls(identity: &ServiceIdentity, handler: RawHandler) -> Self {
        Self::tls_ending(identity, Arc::new(move |req| (handler(req), RawEnd::Close))).await
    }

    /// Like [`RawUpstream::tls`], each answer saying how its connection
    /// ends (a reset, a stall, cleartext under TLS).
    pub async fn tls_ending(identity: &ServiceIdentity, handler: RawEndingHandler) -> Self {
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
            Arc::new(move |req| (handler(req), RawEnd::Close)),
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

    async fn start(handler: RawEndingHandler, wrap: Wrap) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let seen: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (record, raw_record) = (seen.clone(), raw.clone());
        tokio::spawn(async move {
            let wrap = Arc::new(wrap);
            while let Ok((tcp, _)) = listener.accept().await {
                let (handler, record, raw) = (handler.clone(), record.clone(), raw_record.clone());
                let wrap = wrap.clone();
                // The handshake too in the connection's own task: one
                // that never completes holds up no other.
                tokio::spawn(async move {
                    let Some(mut io) = wrap(tcp).await else {
                        return;
                    };
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
                    let (reply, end) = handler(&received);
                    let _ = io.write_all(&reply).await;
                    let _ = io.flush().await;
                    finish(io, end).await;
                });
            }
        });
        Self { port, seen, raw }
    }
}

/// Ends a connection as `end` says.
async fn finish(mut io: Box<dyn Io>, end: RawEnd) {
    match end {
        RawEnd::Close => {
            let _ = io.shutdown().await;
        }
        RawEnd::Reset => {
            // Dropped with a zero linger time: the kernel sends a reset.
            let _ = io.tcp().set_zero_linger();
        }
        RawEnd::Stall => {
            let mut buf = [0u8; 4096];
            while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        RawEnd::Cleartext(bytes) => {
            let tcp = io.tcp();
            let _ = tcp.write_all(&bytes).await;
            let mut buf = [0u8; 4096];
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        }
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
