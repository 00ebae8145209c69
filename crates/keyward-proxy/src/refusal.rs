//! One refusal type for every request the proxy does not complete: it
//! makes both what the client is told (status, `x-keyward-blocked`,
//! `x-keyward-fault`, a message) and the evidence record (status, rule,
//! fault), so the two cannot disagree.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{ProxyBody, text};

/// Whose doing a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The child asked for something it may not have, or asked badly.
    Child,
    /// The upstream could not be reached or answered in a way keyward
    /// cannot pass on safely.
    Upstream,
    /// keyward itself could not serve it (a certificate, the evidence log,
    /// a secret it cannot resolve).
    Keyward,
}

impl Fault {
    /// The word in evidence and in `x-keyward-fault`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Child => "child",
            Fault::Upstream => "upstream",
            Fault::Keyward => "keyward",
        }
    }
}

/// A request refused or failed before its response could be relayed.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// Names the check (`network.strict`, `host_mismatch`,
    /// `upstream_unreachable`, ...): the client's `x-keyward-blocked` and
    /// the record's `blocked`.
    pub(crate) rule: String,
    /// For people: what happened and what to do.
    pub(crate) message: String,
    pub(crate) fault: Fault,
    /// Close the client connection after the answer (a refused upgrade:
    /// the client must not wait for a switch that will not come).
    pub(crate) close: bool,
}

impl Refusal {
    /// A refusal of something the child asked for (403 unless said).
    pub(crate) fn child(status: StatusCode, rule: &str, message: String) -> Self {
        Self::new(status, rule, message, Fault::Child)
    }

    /// A request the upstream made fail.
    pub(crate) fn upstream(status: StatusCode, rule: &str, message: String) -> Self {
        Self::new(status, rule, message, Fault::Upstream)
    }

    /// A request keyward could not serve.
    pub(crate) fn keyward(status: StatusCode, rule: &str, message: String) -> Self {
        Self::new(status, rule, message, Fault::Keyward)
    }

    fn new(status: StatusCode, rule: &str, message: String, fault: Fault) -> Self {
        Self {
            status,
            rule: rule.to_owned(),
            message,
            fault,
            close: false,
        }
    }

    /// The same refusal, closing the connection after it.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// What the client gets.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut resp = text(self.status, &self.message);
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.rule) {
            headers.insert("x-keyward-blocked", v);
        }
        headers.insert(
            "x-keyward-fault",
            HeaderValue::from_static(self.fault.as_str()),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The rule of a request refused because it could not be recorded.
pub(crate) const EVIDENCE_UNAVAILABLE: &str = "evidence_unavailable";
/// The rule of a refused protocol switch.
pub(crate) const UPGRADE_REFUSED: &str = "upgrade_refused";
