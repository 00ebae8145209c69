//! The proxy's events on their way to the evidence log: redacted like every
//! other record first, so a secret or run token a child puts into a request
//! line (method, host or path) reaches neither the evidence log nor the
//! `egress` line of the daemon's log.

use std::sync::Arc;

use keyward_evidence::EvidenceLog;
use keyward_proxy::{EgressEvent, EgressSink, EvidenceSink};

use crate::redaction;
use keyward_runs::Registry;
use keyward_runs::authority::Authority;
use keyward_runs::report::RunReports;

/// [`EvidenceSink`] behind the daemon's redaction. It holds only what
/// redaction and the run reports need, not the daemon's state: the state
/// owns the proxy, which owns this sink.
pub(crate) struct RedactedEvidence {
    authority: Arc<Authority>,
    runs: Arc<Registry>,
    run_reports: Arc<RunReports>,
    inner: EvidenceSink,
}

impl RedactedEvidence {
    pub(crate) fn new(
        authority: Arc<Authority>,
        runs: Arc<Registry>,
        run_reports: Arc<RunReports>,
        evidence: Arc<EvidenceLog>,
    ) -> Self {
        Self {
            authority,
            runs,
            run_reports,
            inner: EvidenceSink(evidence),
        }
    }
}

impl EgressSink for RedactedEvidence {
    fn record(&self, mut event: EgressEvent) {
        // The fields the child chooses; the rest are the daemon's own
        // (run id, grant and rule names, numbers).
        let mut request = serde_json::json!([event.method, event.host, event.path]);
        redaction::redact(&self.authority, &self.runs, &mut request);
        if let serde_json::Value::Array(fields) = request
            && let [method, host, path] = fields.as_slice()
        {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (event.method, event.host, event.path) = (text(method), text(host), text(path));
        }
        let authority = &self.authority;
        self.run_reports
            .note(&event, || authority.frozen_of(&event.run_id));
        self.inner.record(event);
    }

    fn unwritable(&self) -> Option<String> {
        self.inner.unwritable()
    }
}
