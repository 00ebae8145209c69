//! One refusal type for every request the proxy does not complete: it
//! makes both what the client is told (status, `x-keyward-blocked`,
//! `x-keyward-fault`, a message, or a gRPC status) and the evidence record
//! (status, rule, fault, error), so the two cannot disagree. As with
//! pingora's `ErrorType`, the kind of refusal (a [`Rule`]) decides its
//! status, whose fault it is and its gRPC code; the refusal adds what
//! people read.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{BoxError, ProxyBody, text};
use crate::grpc::{GrpcStatus, OwnAnswer};

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

/// The check that refused a request. Its word ([`Rule::as_str`]) is the
/// client's `x-keyward-blocked` and the record's `blocked`: scripts and
/// the README name these words, so they never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The request carries the run's token (raw or encoded).
    RunToken,
    /// A CONNECT where a tunnel already is (an intercepted tunnel, a broker
    /// stream, a base URL).
    ConnectNotHere,
    /// A cloud metadata endpoint, always denied.
    NetworkMetadata,
    /// A host a run in strict network mode does not name.
    NetworkStrict,
    /// The policy rule (its id) that blocks the request or asks for
    /// approval.
    Policy(String),
    /// A grant for this destination whose secret is in a sealed vault.
    VaultSealed,
    /// A grant for this destination whose secret does not resolve.
    SecretUnavailable,
    /// A grant's secret would go in clear.
    PlaintextRefused,
    /// `Host` or the URI authority names another host than the destination.
    HostMismatch,
    /// The placeholder of a grant whose secret may not go here.
    PlaceholderWrongHost,
    /// The request body could not be read to swap placeholders.
    RequestBodyUnreadable,
    /// A placeholder in a body too large to buffer.
    PlaceholderBody,
    /// The client's body broke off while it streamed upstream.
    ClientBodyAborted,
    /// A request the proxy cannot make sense of.
    BadRequest,
    /// No upstream URL can be made of the request.
    BadUrl,
    /// A handshake carrying a secret asks to switch to something other
    /// than WebSocket.
    UpgradeRefused,
    /// The upstream switched to something whose bytes cannot be scrubbed
    /// (the same word as [`Rule::UpgradeRefused`], the upstream's doing).
    UpstreamSwitchRefused,
    /// The upstream's name did not resolve (to an address it may have).
    UpstreamUnresolved,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream sent no response head in time.
    UpstreamTimeout,
    /// The upstream's response broke off while keyward read it.
    UpstreamLost,
    /// A response in an encoding keyward cannot decode to scrub.
    UnknownEncoding,
    /// The evidence log cannot record the request.
    EvidenceUnavailable,
    /// No certificate could be minted for an intercepted host.
    CertificateUnavailable,
    /// A base-URL endpoint of a grant the run does not have.
    BaseUrlUnknownGrant,
    /// An upgrade on a broker stream.
    BrokerUpgradeUnsupported,
    /// A broker request that names no host, with no single grant host to
    /// default to.
    BrokerNoHost,
    /// A broker request to a host none of the run's grants names.
    BrokerHostNotGranted,
}

impl Rule {
    /// The word in `x-keyward-blocked` and in the record's `blocked`.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Rule::RunToken => "run_token",
            Rule::ConnectNotHere => "connect_not_here",
            Rule::NetworkMetadata => "network.metadata",
            Rule::NetworkStrict => "network.strict",
            Rule::Policy(id) => id,
            Rule::VaultSealed => "vault_sealed",
            Rule::SecretUnavailable => "secret_unavailable",
            Rule::PlaintextRefused => "plaintext_refused",
            Rule::HostMismatch => "host_mismatch",
            Rule::PlaceholderWrongHost => "placeholder_wrong_host",
            Rule::RequestBodyUnreadable => "request_body_unreadable",
            Rule::PlaceholderBody => "placeholder_body",
            Rule::ClientBodyAborted => "client_body_aborted",
            Rule::BadRequest => "bad_request",
            Rule::BadUrl => "bad_url",
            Rule::UpgradeRefused | Rule::UpstreamSwitchRefused => "upgrade_refused",
            Rule::UpstreamUnresolved => "upstream_unresolved",
            Rule::UpstreamUnreachable => "upstream_unreachable",
            Rule::UpstreamTimeout => "upstream_timeout",
            Rule::UpstreamLost => "upstream_lost",
            Rule::UnknownEncoding => "unknown_encoding",
            Rule::EvidenceUnavailable => "evidence_unavailable",
            Rule::CertificateUnavailable => "certificate_unavailable",
            Rule::BaseUrlUnknownGrant => "base_url.unknown_grant",
            Rule::BrokerUpgradeUnsupported => "broker.upgrade_unsupported",
            Rule::BrokerNoHost => "broker.no_host",
            Rule::BrokerHostNotGranted => "broker.host_not_granted",
        }
    }

    /// The HTTP status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Rule::RunToken
            | Rule::NetworkMetadata
            | Rule::NetworkStrict
            | Rule::Policy(_)
            | Rule::PlaintextRefused
            | Rule::HostMismatch
            | Rule::PlaceholderWrongHost
            | Rule::UpgradeRefused
            | Rule::BrokerHostNotGranted => StatusCode::FORBIDDEN,
            Rule::ConnectNotHere => StatusCode::METHOD_NOT_ALLOWED,
            Rule::VaultSealed => StatusCode::LOCKED,
            Rule::SecretUnavailable | Rule::EvidenceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rule::RequestBodyUnreadable
            | Rule::ClientBodyAborted
            | Rule::BadRequest
            | Rule::BadUrl
            | Rule::BrokerNoHost => StatusCode::BAD_REQUEST,
            Rule::PlaceholderBody => StatusCode::PAYLOAD_TOO_LARGE,
            Rule::UpstreamSwitchRefused
            | Rule::UpstreamUnresolved
            | Rule::UpstreamUnreachable
            | Rule::UpstreamLost
            | Rule::UnknownEncoding => StatusCode::BAD_GATEWAY,
            Rule::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rule::CertificateUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
            Rule::BaseUrlUnknownGrant => StatusCode::NOT_FOUND,
            Rule::BrokerUpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Whose doing it is.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Rule::UpstreamSwitchRefused
            | Rule::UpstreamUnresolved
            | Rule::UpstreamUnreachable
            | Rule::UpstreamTimeout
            | Rule::UpstreamLost
            | Rule::UnknownEncoding => Fault::Upstream,
            Rule::VaultSealed
            | Rule::SecretUnavailable
            | Rule::EvidenceUnavailable
            | Rule::CertificateUnavailable => Fault::Keyward,
            _ => Fault::Child,
        }
    }

    /// The status a gRPC client gets instead (see
    /// `grpc::own_answer_as_status`): the code gRPC gives the rule's HTTP
    /// status, except a 413 (out of resources) and a 423 (unavailable).
    pub(crate) fn grpc_status(&self) -> GrpcStatus {
        match self {
            Rule::RunToken
            | Rule::NetworkMetadata
            | Rule::NetworkStrict
            | Rule::Policy(_)
            | Rule::PlaintextRefused
            | Rule::HostMismatch
            | Rule::PlaceholderWrongHost
            | Rule::UpgradeRefused
            | Rule::BrokerHostNotGranted => GrpcStatus::PermissionDenied,
            Rule::RequestBodyUnreadable
            | Rule::ClientBodyAborted
            | Rule::BadRequest
            | Rule::BadUrl
            | Rule::BrokerNoHost => GrpcStatus::Internal,
            Rule::PlaceholderBody => GrpcStatus::ResourceExhausted,
            Rule::VaultSealed
            | Rule::SecretUnavailable
            | Rule::EvidenceUnavailable
            | Rule::UpstreamSwitchRefused
            | Rule::UpstreamUnresolved
            | Rule::UpstreamUnreachable
            | Rule::UpstreamTimeout
            | Rule::UpstreamLost
            | Rule::UnknownEncoding => GrpcStatus::Unavailable,
            Rule::BaseUrlUnknownGrant => GrpcStatus::Unimplemented,
            Rule::ConnectNotHere
            | Rule::CertificateUnavailable
            | Rule::BrokerUpgradeUnsupported => GrpcStatus::Unknown,
        }
    }

    /// Whether the client connection closes after the answer: a refused
    /// switch of protocols, so the client does not wait for one.
    fn closes(&self) -> bool {
        matches!(self, Rule::UpgradeRefused | Rule::UpstreamSwitchRefused)
    }
}

/// A request refused or failed before its response could be relayed.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) rule: Rule,
    /// For people: what happened and what to do.
    pub(crate) message: String,
    /// For the record only (its `error`): what failed underneath.
    cause: Option<String>,
}

impl Refusal {
    pub(crate) fn new(rule: Rule, message: String) -> Self {
        Self {
            rule,
            message,
            cause: None,
        }
    }

    /// The same refusal, recording `cause` as the request's error.
    pub(crate) fn with_cause(mut self, cause: String) -> Self {
        self.cause = Some(cause);
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.rule.status()
    }

    pub(crate) fn fault(&self) -> Fault {
        self.rule.fault()
    }

    /// What failed underneath, for the record.
    pub(crate) fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// What the client gets.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut resp = text(self.status(), &self.message);
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(self.rule.as_str()) {
            headers.insert("x-keyward-blocked", v);
        }
        headers.insert(
            "x-keyward-fault",
            HeaderValue::from_static(self.fault().as_str()),
        );
        if self.rule.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.extensions_mut()
            .insert(OwnAnswer(self.rule.grpc_status()));
        resp
    }
}

/// A request body that failed on purpose while it streamed upstream (a
/// placeholder or the run token in it, or the client broke off), carrying
/// its refusal: the upstream client fails the exchange with an error whose
/// sources hold this, and the exchange answers with the refusal rather
/// than as an unreachable upstream.
#[derive(Debug)]
pub(crate) struct RefusedBody {
    refusal: Refusal,
    source: Option<BoxError>,
}

impl RefusedBody {
    pub(crate) fn new(refusal: Refusal) -> Self {
        Self {
            refusal,
            source: None,
        }
    }

    /// A body refused because reading it failed with `source`.
    pub(crate) fn caused_by(refusal: Refusal, source: impl Into<BoxError>) -> Self {
        Self {
            refusal,
            source: Some(source.into()),
        }
    }

    /// The refusal somewhere in `e`'s chain of sources, if any.
    pub(crate) fn in_chain<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refusal> {
        let mut current = Some(e);
        while let Some(err) = current {
            if let Some(refused) = err.downcast_ref::<RefusedBody>() {
                return Some(&refused.refusal);
            }
            current = err.source();
        }
        None
    }
}

impl std::fmt::Display for RefusedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.refusal.message.trim_end())?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for RefusedBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The answer to a request without a valid run token: not a refusal of
/// the run's (there is no run to record it for).
pub(crate) fn proxy_auth_required() -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "keyward's proxy needs a valid run token (Proxy-Authorization); start the program with `keyward run`\n",
    );
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"keyward\""),
    );
    resp.extensions_mut()
        .insert(OwnAnswer(GrpcStatus::Unauthenticated));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule, once.
    fn every_rule() -> Vec<Rule> {
        vec![
            Rule::RunToken,
            Rule::ConnectNotHere,
            Rule::NetworkMetadata,
            Rule::NetworkStrict,
            Rule::Policy("git.push.main".to_owned()),
            Rule::VaultSealed,
            Rule::SecretUnavailable,
            Rule::PlaintextRefused,
            Rule::HostMismatch,
            Rule::PlaceholderWrongHost,
            Rule::RequestBodyUnreadable,
            Rule::PlaceholderBody,
            Rule::ClientBodyAborted,
            Rule::BadRequest,
            Rule::BadUrl,
            Rule::UpgradeRefused,
            Rule::UpstreamSwitchRefused,
            Rule::UpstreamUnresolved,
            Rule::UpstreamUnreachable,
            Rule::UpstreamTimeout,
            Rule::UpstreamLost,
            Rule::UnknownEncoding,
            Rule::EvidenceUnavailable,
            Rule::CertificateUnavailable,
            Rule::BaseUrlUnknownGrant,
            Rule::BrokerUpgradeUnsupported,
            Rule::BrokerNoHost,
            Rule::BrokerHostNotGranted,
        ]
    }

    /// A request body that yields `sent`, then fails with `refused`.
    struct FailingBody {
        sent: Option<bytes::Bytes>,
        refused: Option<RefusedBody>,
    }

    impl hyper::body::Body for FailingBody {
        type Data = bytes::Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>> {
            let next = match self.sent.take() {
                Some(data) => Some(Ok(hyper::body::Frame::data(data))),
                None => self.refused.take().map(|r| Err(Box::new(r) as BoxError)),
            };
            std::task::Poll::Ready(next)
        }
    }

    #[tokio::test]
    async fn the_upstream_client_fails_with_the_refusal_a_body_carries() {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc =
                hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(Response::new(crate::body::empty()))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
        let client = crate::resolve::build_client(
            rustls::RootCertStore::empty(),
            &crate::proxy::ProxyOptions::default(),
            false,
        );
        let body = FailingBody {
            sent: Some(bytes::Bytes::from_static(b"the start of an upload")),
            refused: Some(RefusedBody::new(Refusal::new(
                Rule::PlaceholderBody,
                "too large\n".to_owned(),
            ))),
        };
        let req = hyper::Request::post(format!("http://127.0.0.1:{port}/"))
            .body(body.boxed())
            .unwrap();
        let e = client.request(req).await.expect_err("the upload failed");
        let refusal = RefusedBody::in_chain(&e).expect("the refusal is in the chain");
        assert_eq!(refusal.rule, Rule::PlaceholderBody);
        assert_eq!(refusal.message, "too large\n");
    }

    #[test]
    fn a_grpc_client_gets_the_code_of_the_http_status() {
        // The table keyward's own answers were mapped by before each
        // rule knew its code.
        let by_status = |status: u16| match status {
            400 => "13",
            401 | 407 => "16",
            403 => "7",
            404 => "12",
            413 => "8",
            423 | 429 | 502 | 503 | 504 => "14",
            _ => "2",
        };
        for rule in every_rule() {
            assert_eq!(
                rule.grpc_status().as_str(),
                by_status(rule.status().as_u16()),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn each_rule_answers_with_the_word_and_status_clients_know() {
        // Scripts, tests and the README match these words and statuses.
        let known = [
            (Rule::RunToken, "run_token", 403),
            (Rule::ConnectNotHere, "connect_not_here", 405),
            (Rule::NetworkMetadata, "network.metadata", 403),
            (Rule::NetworkStrict, "network.strict", 403),
            (
                Rule::Policy("git.push.main".to_owned()),
                "git.push.main",
                403,
            ),
            (Rule::VaultSealed, "vault_sealed", 423),
            (Rule::SecretUnavailable, "secret_unavailable", 503),
            (Rule::PlaintextRefused, "plaintext_refused", 403),
            (Rule::HostMismatch, "host_mismatch", 403),
            (Rule::PlaceholderWrongHost, "placeholder_wrong_host", 403),
            (Rule::RequestBodyUnreadable, "request_body_unreadable", 400),
            (Rule::PlaceholderBody, "placeholder_body", 413),
            (Rule::ClientBodyAborted, "client_body_aborted", 400),
            (Rule::BadRequest, "bad_request", 400),
            (Rule::BadUrl, "bad_url", 400),
            (Rule::UpgradeRefused, "upgrade_refused", 403),
            (Rule::UpstreamSwitchRefused, "upgrade_refused", 502),
            (Rule::UpstreamUnresolved, "upstream_unresolved", 502),
            (Rule::UpstreamUnreachable, "upstream_unreachable", 502),
            (Rule::UpstreamTimeout, "upstream_timeout", 504),
            (Rule::UpstreamLost, "upstream_lost", 502),
            (Rule::UnknownEncoding, "unknown_encoding", 502),
            (Rule::EvidenceUnavailable, "evidence_unavailable", 503),
            (Rule::CertificateUnavailable, "certificate_unavailable", 500),
            (Rule::BaseUrlUnknownGrant, "base_url.unknown_grant", 404),
            (
                Rule::BrokerUpgradeUnsupported,
                "broker.upgrade_unsupported",
                501,
            ),
            (Rule::BrokerNoHost, "broker.no_host", 400),
            (Rule::BrokerHostNotGranted, "broker.host_not_granted", 403),
        ];
        assert_eq!(known.len(), every_rule().len());
        for (rule, word, status) in known {
            let resp = Refusal::new(rule.clone(), "why\n".to_owned()).response();
            assert_eq!(resp.status().as_u16(), status, "{rule:?}");
            assert_eq!(resp.headers()["x-keyward-blocked"], word, "{rule:?}");
            assert_eq!(
                resp.headers().contains_key(header::CONNECTION),
                word == "upgrade_refused",
                "{rule:?}"
            );
        }
    }

    #[test]
    fn only_upstreams_and_keyward_answer_for_their_failures() {
        for rule in every_rule() {
            let expected = match rule.status().as_u16() {
                502 | 504 => Fault::Upstream,
                423 | 500 | 503 => Fault::Keyward,
                _ => Fault::Child,
            };
            assert_eq!(rule.fault(), expected, "{rule:?}");
        }
    }
}
