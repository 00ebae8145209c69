//! The proxy's events on their way to the evidence log: redacted like every
//! other record first, so a secret or run token a child puts into a request
//! line (method, host or path) reaches neither the evidence log nor the
//! `egress` line of the daemon's log.

use std::sync::Arc;

use keyward_proxy::{EgressEvent, EgressSink, EvidenceSink};

use crate::state::AppState;

/// [`EvidenceSink`] behind the daemon's redaction.
pub(crate) struct RedactedEvidence {
    state: Arc<AppState>,
    inner: EvidenceSink,
}

impl RedactedEvidence {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        let inner = EvidenceSink(state.evidence.clone());
        Self { state, inner }
    }
}

impl EgressSink for RedactedEvidence {
    fn record(&self, mut event: EgressEvent) {
        // The fields the child chooses; the rest are the daemon's own
        // (run id, grant and rule names, numbers).
        let mut request = serde_json::json!([event.method, event.host, event.path]);
        self.state.redact(&mut request);
        if let serde_json::Value::Array(fields) = request
            && let [method, host, path] = fields.as_slice()
        {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (event.method, event.host, event.path) = (text(method), text(host), text(path));
        }
        let authority = &self.state.authority;
        self.state
            .run_reports
            .note(&event, || authority.frozen_of(&event.run_id));
        self.inner.record(event);
    }

    fn unwritable(&self) -> Option<String> {
        self.inner.unwritable()
    }
}
