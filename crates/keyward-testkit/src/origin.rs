//! The one HTTPS origin every test talks to (after linkerd2-proxy's
//! integration `server.rs`): a builder with routes, each a closure from
//! the request to an [`Answer`] (status, headers, body, trailers, gzip,
//! slow or broken bodies, a `101` upgrade), over TLS with a fresh test CA
//! and a leaf for localhost, HTTP/1.1 or h2 by ALPN, on 127.0.0.1 port 0.
//! Every request is recorded (body included, even one cut off midway),
//! so a test asserts on what the origin received.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_proxy::ServiceIdentity;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request an [`Origin`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, or as much of it as arrived before the peer broke off.
    pub body: Bytes,
}

impl Received {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Authorization: Basic` credentials, decoded: (user, password).
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let (scheme, given) = self.header("authorization")?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(given.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    }

    /// The `Authorization: Bearer` token, if any (scheme in any case).
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, given) = self.header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(given)
    }

    /// The request as JSON: `method`, `path`, `headers` (an object; a
    /// repeated name keeps its last value) and `body` (lossy UTF-8). What
    /// [`Answer::echo`] sends and what tests compare against.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "headers": self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// What a `101 Switching Protocols` answer hands the connection to.
pub type UpgradeFn = Box<
    dyn FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

enum Shape {
    /// The body at once (with trailers, if any).
    Full,
    /// `size` bytes of `x`, streamed in 64 KiB chunks (a download).
    Repeat(u64),
    /// The body, then the connection is broken before `declared` bytes
    /// were sent (HTTP/1.1: a short body; h2: a reset stream).
    Broken { declared: u64 },
    /// `101`, then the connection goes to the function.
    Upgrade(UpgradeFn),
}

/// How a route answers one request.
pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    trailers: Vec<(String, String)>,
    delay: Option<Duration>,
    gzip: bool,
    shape: Shape,
}

impl Answer {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            trailers: Vec::new(),
            delay: None,
            gzip: false,
            shape: Shape::Full,
        }
    }

    /// 200 with these bytes.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Self::status(200).body(body)
    }

    /// 200 with `value` as `application/json`.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::bytes(value.to_string()).header("content-type", "application/json")
    }

    /// The request back as JSON ([`Received::to_json`]), status 200, with
    /// its `Authorization` also in `x-echo-auth` (so response headers
    /// carry it too).
    pub fn echo(req: &Received) -> Self {
        Self::json(&req.to_json()).header("x-echo-auth", req.header("authorization").unwrap_or(""))
    }

    /// `size` bytes of `x`, streamed, with a Content-Length.
    pub fn repeat(size: u64) -> Self {
        let mut answer = Self::status(200);
        answer.shape = Shape::Repeat(size);
        answer
    }

    /// `101 Switching Protocols` to `protocol`, then `then` owns the
    /// connection. Other headers (e.g. `Sec-WebSocket-Accept`) via
    /// [`Answer::header`].
    pub fn upgrade<F, Fut>(protocol: &str, then: F) -> Self
    where
        F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut answer = Self::status(101)
            .header("connection", "upgrade")
            .header("upgrade", protocol);
        answer.shape = Shape::Upgrade(Box::new(move |io| Box::pin(then(io))));
        answer
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// A trailer after the body (h2, or HTTP/1.1 chunked).
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The body gzip-compressed, with `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    /// Answers only after `delay` (a slow origin; the request is on record
    /// at once).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Declares `declared` bytes, sends the body so far, then breaks the
    /// connection.
    pub fn broken(mut self, declared: u64) -> Self {
        self.shape = Shape::Broken { declared };
        self
    }
}

type Handler = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

/// Builds an [`Origin`]: `Origin::builder().route("/a", |r| ...).start()`.
pub struct OriginBuilder {
    plain: bool,
    alpn: Vec<Vec<u8>>,
    identity: Option<ServiceIdentity>,
    routes: Vec<(String, Handler)>,
    fallback: Handler,
}

impl OriginBuilder {
    /// ALPN protocols offered, e.g. `[b"h2", b"http/1.1"]` (default:
    /// HTTP/1.1 only; `[b"h2"]`: an h2-only origin).
    pub fn alpn(mut self, alpn: &[&[u8]]) -> Self {
        self.alpn = alpn.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Plain HTTP/1.1, no TLS (for what must go in clear).
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }

    /// Presents `identity` (default: a fresh CA and a leaf for localhost).
    pub fn identity(mut self, identity: ServiceIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Requests whose path starts with `prefix` are answered by `handler`;
    /// the first matching route wins.
    pub fn route(
        mut self,
        prefix: &str,
        handler: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> Self {
        self.routes.push((prefix.to_owned(), Arc::new(handler)));
        self
    }

    /// Requests no route matches (default: [`Answer::echo`]).
    pub fn fallback(
        mut self,
        handler: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Arc::new(handler);
        self
    }

    /// Binds 127.0.0.1:0 and serves on the current tokio runtime. The
    /// port is bound before this returns: a client may connect at once.
    pub async fn start(self) -> Origin {
        let identity = match self.identity {
            Some(identity) => identity,
            None => ServiceIdentity::new("localhost").expect("a test identity"),
        };
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let cfg = identity.server_config(&alpn).expect("a server config");
        let acceptor = (!self.plain).then(|| tokio_rustls::TlsAcceptor::from(Arc::new(cfg)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
            routes: self.routes,
            fallback: self.fallback,
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Some(acceptor) = acceptor else {
                        return serve(tcp, false, state).await;
                    };
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve(tls, h2, state).await;
                });
            }
        });
        Origin {
            addr,
            ca_pem: identity.ca_pem.clone(),
            scheme: if self.plain { "http" } else { "https" },
            state,
            runtime: None,
        }
    }

    /// For tests without a runtime (the CLI tests): serves on a runtime of
    /// its own, which stops when the origin is dropped. Not from inside a
    /// runtime (dropping one there panics).
    pub fn start_background(self) -> Origin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-origin")
            .enable_all()
            .build()
            .expect("a runtime for the origin");
        let mut origin = runtime.block_on(self.start());
        origin.runtime = Some(runtime);
        origin
    }
}

/// Serves one connection (TLS or not) to its end, noting it in
/// [`Origin::connections`].
async fn serve<T>(io: T, h2: bool, state: Arc<State>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let index = {
        let mut connections = state.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.push(Connection::default());
        connections.len() - 1
    };
    let flushes = Arc::new(Flushes::default());
    let io = Tap {
        inner: io,
        flushes: flushes.clone(),
    };
    let (svc_state, svc_flushes) = (state.clone(), flushes.clone());
    let svc = service_fn(move |req| answer(req, svc_state.clone(), svc_flushes.clone()));
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await;
    }
    let last = *flushes.answered.lock().unwrap_or_else(|p| p.into_inner());
    state.connections.lock().unwrap_or_else(|p| p.into_inner())[index] = Connection {
        closed: true,
        idle_at_close: last.map(|at| at.elapsed()),
    };
}

/// One connection an [`Origin`] accepted.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Whether it has ended (either side closed it).
    pub closed: bool,
    /// How long it sat idle after its last answer went out, when it ended
    /// (`None`: still open, or it never answered).
    pub idle_at_close: Option<Duration>,
}

struct State {
    received: Mutex<Vec<Received>>,
    connections: Mutex<Vec<Connection>>,
    /// Requests read but not yet answered (see [`Origin::settle`]).
    in_flight: AtomicUsize,
    routes: Vec<(String, Handler)>,
    fallback: Handler,
}

/// A Rust HTTPS origin on loopback; see [`OriginBuilder`].
pub struct Origin {
    pub addr: SocketAddr,
    /// The test CA its leaf chains to (PEM), for clients and the proxy's
    /// `upstream_ca`.
    pub ca_pem: String,
    scheme: &'static str,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        // Stop at once: a slow answer in flight must not hold the test.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Origin {
    /// An origin with no routes: every request is echoed.
    pub fn builder() -> OriginBuilder {
        OriginBuilder {
            plain: false,
            alpn: vec![b"http/1.1".to_vec()],
            identity: None,
            routes: Vec::new(),
            fallback: Arc::new(Answer::echo),
        }
    }

    /// Starts an origin offering `alpn` (e.g. `[b"h2", b"http/1.1"]`;
    /// empty: HTTP/1.1), answering every request with `reply`. Needs a
    /// tokio runtime.
    pub async fn start(alpn: &[&[u8]], reply: Reply) -> Self {
        let identity = ServiceIdentity::new("localhost").expect("a test identity");
        Self::start_with(&identity, alpn, reply).await
    }

    /// Like [`Origin::start`], presenting `identity`.
    pub async fn start_with(identity: &ServiceIdentity, alpn: &[&[u8]], reply: Reply) -> Self {
        let builder = Self::builder().alpn(alpn).identity(identity.clone());
        match reply {
            Reply::Fixed(bytes) => builder.fallback(move |_| Answer::bytes(bytes.clone())),
            Reply::Echo => builder,
        }
        .start()
        .await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://localhost:<port><path>` (`http://` when plain).
    pub fn url(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme, self.port())
    }

    /// Writes the CA to `dir/origin-ca.pem`, readable by all (the daemon,
    /// maybe another user, reads it as `proxy.upstream_ca`).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("origin-{}-ca.pem", self.port()));
        let mut file = std::fs::File::create(&path).expect("the CA file");
        file.write_all(self.ca_pem.as_bytes())
            .expect("the CA written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .expect("the CA readable");
        path
    }

    /// The connections it accepted so far, in order.
    pub fn connections(&self) -> Vec<Connection> {
        self.state
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What it received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// [`Origin::received`] as JSON ([`Received::to_json`]).
    pub fn received_json(&self) -> Vec<serde_json::Value> {
        self.received().iter().map(Received::to_json).collect()
    }

    /// Waits (up to 10 s) until every request it has started to read is on
    /// record: a client that gave up midway leaves no half-read request
    /// behind.
    pub fn settle(&self) {
        crate::wait_for(Duration::from_secs(10), || {
            self.state.in_flight.load(Ordering::SeqCst) == 0
        });
    }
}

/// How an [`Origin`] started with [`Origin::start`] answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These bytes, status 200.
    Fixed(Bytes),
    /// The request as JSON (`method`, `path`, `headers`, `body`), status 200.
    Echo,
}

/// Decrements the in-flight count however the request ends (the
/// connection may drop the future midway).
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Out = Response<ChannelBody>;

async fn answer(
    mut req: Request<Incoming>,
    state: Arc<State>,
    flushes: Arc<Flushes>,
) -> Result<Out, Infallible> {
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(state.clone());
    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, mut body) = req.into_parts();
    // Frame by frame, so that a body cut off midway is on record as far
    // as it came.
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(_) => break,
        }
    }
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: Bytes::from(bytes),
    };
    let handler = state
        .routes
        .iter()
        .find(|(prefix, _)| received.path.starts_with(prefix.as_str()))
        .map_or(&state.fallback, |(_, h)| h)
        .clone();
    let answer = handler(&received);
    state
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(received);
    drop(guard);
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let h1 = parts.version < hyper::Version::HTTP_2;
    Ok(respond(answer, upgrade, flushes, h1))
}

fn respond(
    answer: Answer,
    upgrade: hyper::upgrade::OnUpgrade,
    flushes: Arc<Flushes>,
    h1: bool,
) -> Out {
    let connection = flushes.clone();
    let (tx, body) = ChannelBody::new();
    let mut body_break = None;
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(answer.status).expect("a valid status");
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    let mut data = answer.body;
    if answer.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).expect("gzip in memory");
        data = Bytes::from(enc.finish().expect("gzip in memory"));
        headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    let trailers = (!answer.trailers.is_empty()).then(|| {
        let mut map = HeaderMap::new();
        for (name, value) in &answer.trailers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a trailer name"),
                HeaderValue::from_str(value).expect("a trailer value"),
            );
        }
        map
    });
    // HTTP/1.1 sends only the trailers the head announced (and only to a
    // client that sent `TE: trailers`).
    if h1 && !answer.trailers.is_empty() && !headers.contains_key("trailer") {
        let names: Vec<&str> = answer.trailers.iter().map(|(n, _)| n.as_str()).collect();
        headers.insert(
            "trailer",
            HeaderValue::from_str(&names.join(", ")).expect("trailer names"),
        );
    }
    let length = match &answer.shape {
        // HTTP/1.1 trailers need a chunked body; h2 sends them after a
        // body of declared length.
        Shape::Full if trailers.is_none() || !h1 => Some(data.len() as u64),
        Shape::Full | Shape::Upgrade(_) => None,
        Shape::Repeat(size) => Some(*size),
        Shape::Broken { declared } => Some(*declared),
    };
    if let Some(length) = length
        && !headers.contains_key("content-length")
    {
        headers.insert("content-length", HeaderValue::from(length));
    }
    match answer.shape {
        Shape::Full => {
            let _ = tx.send(Ok(Frame::data(data)));
            if let Some(trailers) = trailers {
                let _ = tx.send(Ok(Frame::trailers(trailers)));
            }
        }
        Shape::Repeat(size) => {
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 65536]);
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if tx
                        .send_async(Ok(Frame::data(chunk.slice(..n))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
        Shape::Broken { .. } => {
            // The part now; the break is the body's own doing (see
            // `ChannelBody::poll_frame`), once the part is on the wire.
            let _ = tx.send(Ok(Frame::data(data)));
            drop(tx);
            body_break = Some(Breaker {
                flushes,
                seen: None,
            });
        }
        Shape::Upgrade(then) => {
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    then(TokioIo::new(io)).await;
                }
            });
        }
    }
    response.body_mut().breaker = body_break;
    response.body_mut().connection = Some(connection);
    response
}

/// A response body fed frame by frame from a channel: whole bodies,
/// streamed downloads and bodies that fail midway are all this one type.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    breaker: Option<Breaker>,
    /// Told when the body is done with (see [`Connection::idle_at_close`]).
    connection: Option<Arc<Flushes>>,
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            *connection
                .answered
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        }
    }
}

/// Breaks a body off after its last frame. An error frame makes hyper
/// drop the connection (h2: reset the stream) at once, discarding what it
/// has not written yet; so the error comes only after a flush that began
/// once the body had handed over everything before it.
struct Breaker {
    flushes: Arc<Flushes>,
    /// The flush count when the body was first polled past its end.
    seen: Option<usize>,
}

/// Completed flushes of one connection, and who waits for the next.
#[derive(Default)]
struct Flushes {
    count: AtomicUsize,
    /// When the connection's last answer was written out (its body
    /// dropped by hyper).
    answered: Mutex<Option<std::time::Instant>>,
    waiter: Mutex<Option<std::task::Waker>>,
}

impl Flushes {
    fn now(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn wait(&self, cx: &Context<'_>) {
        *self.waiter.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
    }

    fn flushed(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(waker) = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take() {
            waker.wake();
        }
    }
}

struct Feed(mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>);

impl Feed {
    /// For the few frames of a whole body (the channel has room).
    fn send(&self, frame: Result<Frame<Bytes>, std::io::Error>) -> Result<(), ()> {
        self.0.try_send(frame).map_err(drop)
    }

    /// For a stream: waits while the client is slow to read.
    async fn send_async(&self, frame: Result<Frame<Bytes>, std::io::Error>) -> Result<(), ()> {
        self.0.send(frame).await.map_err(drop)
    }
}

impl ChannelBody {
    fn new() -> (Feed, Self) {
        let (tx, rx) = mpsc::channel(4);
        (
            Feed(tx),
            Self {
                rx,
                breaker: None,
                connection: None,
            },
        )
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match (this.rx.poll_recv(cx), &mut this.breaker) {
            (Poll::Ready(None), Some(breaker)) => {
                let now = breaker.flushes.now();
                match breaker.seen {
                    Some(seen) if now > seen => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the test origin breaks this body off",
                    )))),
                    _ => {
                        breaker.seen.get_or_insert(now);
                        breaker.flushes.wait(cx);
                        // Re-check: a flush may have completed meanwhile.
                        if breaker.flushes.now() > *breaker.seen.as_ref().unwrap_or(&now) {
                            cx.waker().wake_by_ref();
                        }
                        Poll::Pending
                    }
                }
            }
            (polled, _) => polled,
        }
    }
}

/// A connection that counts its completed flushes, so that a broken body
/// breaks only after what came before it is on the wire.
struct Tap<T> {
    inner: T,
    flushes: Arc<Flushes>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let done = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(done, Poll::Ready(Ok(()))) {
            self.flushes.flushed();
        }
        done
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
