//! The logging phase's side of a request that ends in the proxy: its
//! event, and the one record of each refusal.

use std::sync::Arc;

use hyper::Response;

use crate::body::ProxyBody;
use crate::context::RunContext;
use crate::events::{EgressEvent, EgressSink, Via};
use crate::proxy::Proxy;
use crate::refusal::{Fault, Refusal, Rule};

/// Where a request goes: what the policy, the network rules and the
/// grants are asked about.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Over TLS upstream (`https`), or in clear (`http`).
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// No destination: a request refused before one was known (recorded
    /// with an empty host and port 0).
    pub(crate) fn none() -> Self {
        Self {
            tls: true,
            host: String::new(),
            port: 0,
        }
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub(crate) fn authority(&self) -> String {
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The event of a request in flight. If the request is dropped before an
/// outcome is recorded (the client went away while keyward waited on the
/// upstream or read the body), the drop records it: a request that may
/// have reached the upstream with a secret is never off the record.
pub(crate) struct Pending {
    event: Option<EgressEvent>,
    sink: Arc<dyn EgressSink>,
}

impl Pending {
    /// The event, to be recorded by whoever takes it (once).
    pub(crate) fn take(&mut self) -> EgressEvent {
        self.event.take().expect("a pending event is taken once")
    }
}

impl std::ops::Deref for Pending {
    type Target = EgressEvent;
    fn deref(&self) -> &EgressEvent {
        self.event.as_ref().expect("a pending event is taken once")
    }
}

impl std::ops::DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut EgressEvent {
        self.event.as_mut().expect("a pending event is taken once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            // 499: nginx's "client closed request".
            event.status = 499;
            event.blocked = Some(CLIENT_CLOSED.to_owned());
            event.fault = Some(Fault::Child);
            self.sink.record(event);
        }
    }
}

/// The rule of a request whose client went away before it was answered.
pub(crate) const CLIENT_CLOSED: &str = "client_closed";

impl Proxy {
    /// `event`, recorded even if the request is dropped before it ends.
    pub(crate) fn pending(&self, event: EgressEvent) -> Pending {
        Pending {
            event: Some(event),
            sink: self.events.clone(),
        }
    }

    /// The event of a request, before its outcome is known.
    pub(crate) fn event(
        &self,
        run: &RunContext,
        via: Via,
        method: &str,
        target: &Target,
        path: &str,
    ) -> EgressEvent {
        // What the child chose goes on record without its run token.
        let (method, host, path) = match &run.token {
            Some(token) => (
                token.redact(method).into_owned(),
                token.redact(&target.host).into_owned(),
                token.redact(path).into_owned(),
            ),
            None => (method.to_owned(), target.host.clone(), path.to_owned()),
        };
        EgressEvent {
            run_id: run.run_id.clone(),
            method,
            host,
            port: target.port,
            path,
            status: 0,
            bytes: 0,
            injected: Vec::new(),
            blocked: None,
            decision: None,
            via,
            fault: None,
            error: None,
        }
    }

    /// Records `refusal` as the outcome of `event` and answers with it:
    /// the client's answer and the record come from the same value.
    pub(crate) fn refuse(&self, mut event: EgressEvent, refusal: Refusal) -> Response<ProxyBody> {
        event.status = refusal.status().as_u16();
        event.blocked = Some(refusal.rule.as_str().to_owned());
        event.fault = Some(refusal.fault());
        if let Some(cause) = refusal.cause() {
            event.error = Some(cause.to_owned());
        }
        self.events.record(event);
        refusal.response()
    }

    /// While events cannot be recorded (the evidence log's disk is full),
    /// a 503 instead of an unrecorded request. The refusal is itself an
    /// event, recorded if the log can take it by then; the log looks for
    /// room by itself, so refusals end soon after space comes back.
    pub(crate) fn unrecordable(&self, event: &EgressEvent) -> Option<Refusal> {
        let why = self.events.unwritable()?;
        tracing::error!(
            host = event.host,
            "proxy request refused: cannot record it: {why}"
        );
        Some(Refusal::new(
            Rule::EvidenceUnavailable,
            "keyward refused this request: the evidence log cannot record it (the daemon log says why)\n"
                .to_owned(),
        ))
    }
}
