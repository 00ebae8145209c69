//! What one request carries from phase to phase (after pingora's `CTX`):
//! its run and destination, its pending record, where each credential may
//! go, what was injected, and whether it asks to switch protocols.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Version};

use crate::context::{RunContext, Scope};
use crate::events::Via;
use crate::proxy::Proxy;
use crate::record::{Pending, Target};

/// One request in the pipeline.
pub(crate) struct RequestCtx<'r> {
    pub(crate) run: &'r RunContext,
    pub(crate) target: &'r Target,
    /// Its record, written as the phases learn the outcome; recorded even
    /// if the request is dropped half way.
    pub(crate) event: Pending,
    /// Per credential of the run (same order), whether it may go here;
    /// set by the request filter.
    pub(crate) scopes: Vec<Scope>,
    /// The grants whose secrets the upstream filter put in the request.
    pub(crate) injected: Vec<&'r str>,
    /// `host` or `host:port` of the destination, as errors name it.
    pub(crate) authority: String,
    /// HTTP/2 in clear, which came through an h2c tunnel: it goes
    /// upstream likewise.
    pub(crate) prior_knowledge: bool,
    pub(crate) upgrade: Upgrade,
}

/// An HTTP/1.1 request to switch protocols (WebSocket): the handshake goes
/// through the same pipeline (injection included); after a 101 both sides
/// are joined, WebSocket frames scrubbed (see websocket.rs).
pub(crate) struct Upgrade {
    /// The `Upgrade` header asked for, if any.
    pub(crate) protocol: Option<HeaderValue>,
    /// The client's side of the switch, taken when the upstream agrees.
    pub(crate) client: Option<OnUpgrade>,
    /// Exactly WebSocket was asked for.
    pub(crate) websocket: bool,
    /// Frames are relayed frame by frame (not copied) because either way
    /// may carry something to scrub: the run's secrets coming down, its
    /// token going up.
    pub(crate) scrub_frames: bool,
}

impl<'r> RequestCtx<'r> {
    /// The context of `req` (whose client side of an upgrade it takes),
    /// with its record opened.
    pub(crate) fn new(
        proxy: &Proxy,
        run: &'r RunContext,
        target: &'r Target,
        via: Via,
        req: &mut Request<Incoming>,
    ) -> Self {
        let prior_knowledge = !target.tls && req.version() == Version::HTTP_2;
        let protocol = req
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .filter(|_| req.version() == Version::HTTP_11);
        let client = protocol.as_ref().map(|_| hyper::upgrade::on(&mut *req));
        let websocket = protocol.as_ref().is_some_and(is_websocket);
        let scrub_frames = websocket && (run.scrubber.is_some() || run.token.is_some());
        let event = proxy.event(run, via, req.method().as_str(), target, req.uri().path());
        Self {
            run,
            target,
            event: proxy.pending(event),
            scopes: Vec::new(),
            injected: Vec::new(),
            authority: target.authority(),
            prior_knowledge,
            upgrade: Upgrade {
                protocol,
                client,
                websocket,
                scrub_frames,
            },
        }
    }
}

/// Whether an `Upgrade` value is exactly one protocol, WebSocket (a list
/// such as `websocket, x-other` is not: the server may pick the other).
pub(crate) fn is_websocket(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut tokens = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    tokens
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
        && tokens.next().is_none()
}
