//! The logging phase's side of a request that ends in the proxy: its
//! event, and the one record of each refusal.

use hyper::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::context::RunContext;
use crate::events::{EgressEvent, Via};
use crate::proxy::Proxy;
use crate::refusal::{EVIDENCE_UNAVAILABLE, Refusal};

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

impl Proxy {
    /// The event of a request, before its outcome is known.
    pub(crate) fn event(
        &self,
        run: &RunContext,
        via: Via,
        method: &str,
        target: &Target,
        path: &str,
    ) -> EgressEvent {
        EgressEvent {
            run_id: run.run_id.clone(),
            method: method.to_owned(),
            host: target.host.clone(),
            port: target.port,
            path: path.to_owned(),
            status: 0,
            bytes: 0,
            injected: Vec::new(),
            blocked: None,
            decision: None,
            via,
            fault: None,
        }
    }

    /// Records `refusal` as the outcome of `event` and answers with it:
    /// the client's answer and the record come from the same value.
    pub(crate) fn refuse(&self, mut event: EgressEvent, refusal: Refusal) -> Response<ProxyBody> {
        event.status = refusal.status.as_u16();
        event.blocked = Some(refusal.rule.clone());
        event.fault = Some(refusal.fault);
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
        Some(Refusal::keyward(
            StatusCode::SERVICE_UNAVAILABLE,
            EVIDENCE_UNAVAILABLE,
            "keyward refused this request: the evidence log cannot record it (the daemon log says why)\n"
                .to_owned(),
        ))
    }
}
