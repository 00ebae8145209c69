//! The logging phase: one [`EgressEvent`] per request, emitted when the
//! response body is finished (so it carries the byte count), to whatever
//! [`EgressSink`] the proxy was given.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use keyward_api::Decision;
use keyward_evidence::{CanonicalObject, EvidenceLog, Kind};

use crate::body::ProxyBody;
use crate::refusal::Fault;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the policy said about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// allow, block or require_approval.
    pub decision: Decision,
    /// The deciding rule.
    pub rule_id: String,
    /// The policy it belongs to.
    pub policy_id: String,
}

/// One proxied request. Never holds a secret: the path has no query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    /// The run.
    pub run_id: String,
    /// HTTP method (or CONNECT for a tunnel).
    pub method: String,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Path without query.
    pub path: String,
    /// Status the client got.
    pub status: u16,
    /// Response body bytes sent to the client (both directions for tunnels
    /// and upgraded connections).
    pub bytes: u64,
    /// Grants whose credentials went upstream.
    pub injected: Vec<String>,
    /// The rule that blocked it, if it was blocked.
    pub blocked: Option<String>,
    /// The policy decision, when the policy was consulted.
    pub decision: Option<PolicyDecision>,
    /// How the request came in.
    pub via: Via,
    /// Whose doing it was, when the request was refused or failed.
    pub fault: Option<Fault>,
    /// What went wrong upstream, if anything: no response, or a response
    /// body that broke off or stalled before it reached the client whole.
    pub error: Option<String>,
}

/// How a request reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `HTTPS_PROXY` / `HTTP_PROXY`: CONNECT or absolute-form.
    Proxy,
    /// A stream the run's fd broker minted.
    Broker,
    /// A grant's base-URL endpoint.
    BaseUrl,
}

impl Via {
    /// The word in evidence and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Proxy => "proxy",
            Via::Broker => "broker",
            Via::BaseUrl => "base_url",
        }
    }
}

/// Where events go.
pub trait EgressSink: Send + Sync + 'static {
    /// Takes one event; must not block.
    fn record(&self, event: EgressEvent);

    /// Why events cannot be recorded now, if they cannot. Meanwhile the
    /// proxy sends nothing upstream: every request out is on the record.
    fn unwritable(&self) -> Option<String> {
        None
    }
}

/// The default sink: a structured `egress` log line.
#[derive(Debug, Default)]
pub struct LogSink;

impl EgressSink for LogSink {
    fn record(&self, event: EgressEvent) {
        log_event(&event, None);
    }
}

/// Writes `event` as the `keyward::egress` log line, with its evidence
/// reference when there is one.
pub fn log_event(event: &EgressEvent, evidence_ref: Option<&str>) {
    tracing::info!(
        target: "keyward::egress",
        run = event.run_id,
        method = event.method,
        host = event.host,
        port = event.port,
        path = event.path,
        status = event.status,
        bytes = event.bytes,
        injected = event.injected.join(","),
        blocked = event.blocked.as_deref().unwrap_or(""),
        rule = event.decision.as_ref().map_or("", |d| d.rule_id.as_str()),
        via = event.via.as_str(),
        fault = event.fault.map_or("", Fault::as_str),
        error = event.error.as_deref().unwrap_or(""),
        evidence = evidence_ref.unwrap_or(""),
        "egress"
    );
}

/// The daemon's sink: each event becomes an `egress` record of the
/// evidence log, and the log line (with the record's reference) follows
/// once the record is on disk. Nobody's answer waits for it, so its write
/// and fsync are shared with others ([`EvidenceLog::append_then`]).
pub struct EvidenceSink(pub Arc<EvidenceLog>);

impl EgressSink for EvidenceSink {
    fn record(&self, event: EgressEvent) {
        let data = egress_record(&event);
        let run_id = Some(event.run_id.clone());
        self.0
            .append_then(Kind::Egress, run_id, data, move |reference| {
                if let Err(e) = &reference {
                    tracing::error!("evidence log: {e}");
                }
                log_event(&event, reference.ok().as_deref());
            });
    }

    fn unwritable(&self) -> Option<String> {
        self.0.unwritable()
    }
}

/// The `data` of an event's `egress` record, written in canonical form
/// directly (one per proxied request: building a JSON value and then
/// canonicalizing it cost more than the rest of the record).
fn egress_record(event: &EgressEvent) -> CanonicalObject {
    let mut request = CanonicalObject::new();
    request
        .str("host", &event.host)
        .str("method", &event.method)
        .str("path", &event.path)
        .u64("port", event.port.into());
    let mut response = CanonicalObject::new();
    response
        .u64("bytes", event.bytes)
        .opt_str("error", event.error.as_deref())
        .u64("status", event.status.into());
    let decision = event.decision.as_ref().map(|d| {
        let mut decision = CanonicalObject::new();
        decision
            .str("decision", d.decision.as_str())
            .str("policy_id", &d.policy_id)
            .str("rule_id", &d.rule_id);
        decision
    });
    let mut data = CanonicalObject::new();
    data.opt_str("blocked", event.blocked.as_deref())
        .object("decision", decision)
        .opt_str("fault", event.fault.map(Fault::as_str))
        .strs("injected", &event.injected)
        .object("request", Some(request))
        .object("response", Some(response))
        .str("via", event.via.as_str());
    data
}

/// A response body that counts what it passes and emits the event when it
/// is dropped: finished, or abandoned by the client.
pub(crate) struct Metered {
    inner: ProxyBody,
    event: Option<EgressEvent>,
    sink: Arc<dyn EgressSink>,
}

impl Metered {
    pub(crate) fn new(inner: ProxyBody, event: EgressEvent, sink: Arc<dyn EgressSink>) -> Self {
        Self {
            inner,
            event: Some(event),
            sink,
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match (&polled, self.event.as_mut()) {
            (Poll::Ready(Some(Ok(frame))), Some(event)) => {
                event.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            (Poll::Ready(Some(Err(e))), Some(event)) => {
                event.error = Some(format!(
                    "the response body broke off: {}",
                    keyward_api::error_chain(&**e)
                ));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.sink.record(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use keyward_api::Decision;
    use keyward_evidence::Payload;
    use serde_json::json;

    use super::*;

    /// What the record was before it was written by hand: the oracle.
    fn as_value(event: &EgressEvent) -> serde_json::Value {
        json!({
            "request": {"method": event.method, "host": event.host, "port": event.port, "path": event.path},
            "response": {"status": event.status, "bytes": event.bytes, "error": event.error},
            "injected": event.injected,
            "blocked": event.blocked,
            "fault": event.fault.map(Fault::as_str),
            "via": event.via.as_str(),
            "decision": event.decision.as_ref().map(|d| json!({
                "decision": d.decision, "rule_id": d.rule_id, "policy_id": d.policy_id,
            })),
        })
    }

    #[test]
    fn the_hand_written_record_is_the_canonical_form_of_the_event() {
        let plain = EgressEvent {
            run_id: "run_1".into(),
            method: "GET".into(),
            host: "api.example.com".into(),
            port: 443,
            path: "/v1/x".into(),
            status: 200,
            bytes: 12_345,
            injected: vec![],
            blocked: None,
            decision: None,
            via: Via::Proxy,
            fault: None,
            error: None,
        };
        let odd = EgressEvent {
            method: "P\"O\\ST\u{7f}".into(),
            host: "h\u{e9}st\u{1F600}\u{1}".into(),
            port: u16::MAX,
            path: "/a\nb\tc\u{2028}\u{ffff}".into(),
            status: 499,
            bytes: u64::MAX,
            injected: vec!["b".into(), "a\"".into(), String::new()],
            blocked: Some("client_closed".into()),
            decision: Some(PolicyDecision {
                decision: Decision::RequireApproval,
                rule_id: "r\u{0}".into(),
                policy_id: "p".into(),
            }),
            via: Via::Broker,
            fault: Some(Fault::Upstream),
            error: Some("broke \"off\"\r\n".into()),
            ..plain.clone()
        };
        for event in [plain, odd] {
            let written = Payload::from(egress_record(&event));
            let Payload::Canonical(text) = written else {
                panic!("not canonical")
            };
            assert_eq!(text, keyward_evidence::canonical_json(&as_value(&event)));
        }
    }
}
