//! What the proxy knows of a run: its resolved credentials, network rules
//! and policy, prepared once for the per-request path; and the trait the
//! daemon implements to hand such contexts out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use keyward_api::Network;
use keyward_policy::Policy;
use secrecy::{ExposeSecret, SecretString};

use crate::inject::injected_header;
use crate::rules::{AllowRule, GrantHost, Injection};
use crate::run_token::RunToken;
use crate::scrub::Scrubber;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One credential of a run, resolved.
pub struct Credential {
    /// The grant it comes from.
    pub grant: String,
    /// Where it may go.
    pub hosts: Vec<GrantHost>,
    /// How.
    pub inject: Injection,
    /// The value.
    pub secret: SecretString,
    /// The placeholder the child holds instead, if any.
    pub placeholder: Option<String>,
    /// May go over plain HTTP (the grant says `plaintext = true`).
    pub plaintext: bool,
    /// Its placeholder is swapped in request bodies too (the grant says
    /// `substitute_body = true`).
    pub substitute_body: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("grant", &self.grant)
            .field("secret", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Whether a credential may go to a request's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Not one of its hosts and ports.
    Outside,
    /// Its host and port, over TLS or to a `plaintext` grant.
    Allowed,
    /// Its host and port, but in clear, which the grant does not allow.
    Cleartext,
}

impl Credential {
    pub(crate) fn scope(&self, host: &str, port: u16, tls: bool) -> Scope {
        if !self.hosts.iter().any(|h| h.matches(host, port, tls)) {
            Scope::Outside
        } else if tls || self.plaintext {
            Scope::Allowed
        } else {
            Scope::Cleartext
        }
    }

    /// Whether `host:port` is one of its destinations, by either scheme.
    pub(crate) fn names(&self, host: &str, port: u16) -> bool {
        self.hosts
            .iter()
            .any(|h| h.matches(host, port, true) || h.matches(host, port, false))
    }
}

/// What the proxy knows of a run, with what the per-request path needs
/// prepared once.
#[derive(Debug)]
pub struct RunContext {
    /// `run_…`.
    pub run_id: String,
    /// Network mode.
    pub network: Network,
    /// Extra allowed hosts (strict mode).
    pub allow: Vec<AllowRule>,
    /// Resolved credentials.
    pub credentials: Vec<Credential>,
    /// Finds every secret of the run (raw and encoded) in responses;
    /// `None` when the run holds no secret.
    pub(crate) scrubber: Option<Arc<Scrubber>>,
    /// Placeholders of credentials that swap them in request bodies: what
    /// a request body is checked for.
    pub(crate) body_placeholders: Arc<Vec<Vec<u8>>>,
    /// Per credential (same order), the header it injects, made once here
    /// rather than per request; `None` for query injection or a header
    /// that cannot be sent (warned about when the context is made).
    pub(crate) headers: Vec<Option<(HeaderName, HeaderValue)>>,
    /// The policy every request is evaluated against (`http_request`).
    pub policy: Option<Arc<Policy>>,
    /// Grants of the run whose secret is unavailable right now (the vault
    /// is sealed, the secret was removed): requests toward their hosts are
    /// refused rather than sent without the credential.
    pub withheld: Vec<Withheld>,
    /// The CI runner identity verified when the run was created: what the
    /// policy's `runner.*` conditions see for the run's requests.
    pub runner: Option<serde_json::Map<String, serde_json::Value>>,
    /// The run's token and the matcher that keeps it from going upstream
    /// or on record (see `run_token.rs`); set by the authority that knows
    /// it ([`RunContext::with_token`]).
    pub(crate) token: Option<Arc<RunToken>>,
}

/// A grant whose secret cannot be had right now.
#[derive(Debug, Clone)]
pub struct Withheld {
    /// The grant.
    pub grant: String,
    /// Its hosts.
    pub hosts: Vec<GrantHost>,
    /// Whether the cause is a sealed vault (423) rather than a secret that
    /// does not resolve (503). The detail stays in the daemon's log: a
    /// backend's error text is not the child's to read.
    pub sealed: bool,
}

impl RunContext {
    /// A run's context; the scrubber and placeholder needles are built
    /// here, not per request.
    pub fn new(
        run_id: String,
        network: Network,
        allow: Vec<AllowRule>,
        credentials: Vec<Credential>,
    ) -> Self {
        let pairs: Vec<(&[u8], &[u8])> = credentials
            .iter()
            .map(|c| {
                let replacement = c.placeholder.as_deref().unwrap_or("[REDACTED]");
                (c.secret.expose_secret().as_bytes(), replacement.as_bytes())
            })
            .collect();
        let scrubber = Scrubber::new(&pairs).map(Arc::new);
        let body_placeholders = credentials
            .iter()
            .filter(|c| c.substitute_body)
            .filter_map(|c| c.placeholder.as_ref().map(|p| p.as_bytes().to_vec()))
            .collect();
        let headers = credentials.iter().map(injected_header).collect();
        Self {
            run_id,
            network,
            allow,
            credentials,
            scrubber,
            body_placeholders: Arc::new(body_placeholders),
            headers,
            policy: None,
            withheld: Vec::new(),
            runner: None,
            token: None,
        }
    }

    /// The run's token, as the child holds it: no request of the run may
    /// carry it upstream (refused, 403 `run_token`), and it is redacted
    /// from the run's records. Its matcher is built here, once per context.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = RunToken::new(token).map(Arc::new);
        self
    }

    /// The run's token, when the context was given it.
    pub fn run_token(&self) -> Option<&SecretString> {
        self.token.as_ref().map(|t| t.value())
    }

    /// Evaluates every request of the run against `policy`.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The run's verified CI runner identity.
    pub fn with_runner(
        mut self,
        runner: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        self.runner = runner;
        self
    }

    /// The grants whose secret is unavailable now.
    pub fn with_withheld(mut self, withheld: Vec<Withheld>) -> Self {
        self.withheld = withheld;
        self
    }

    /// Whether the run names `host:port` itself: an `--allow` pattern or a
    /// grant's host.
    pub(crate) fn names_host(&self, host: &str, port: u16) -> bool {
        self.allow.iter().any(|a| a.matches(host, port))
            || self.credentials.iter().any(|c| c.names(host, port))
    }
}

/// Where the proxy learns which run a token belongs to. Called for each
/// request, so a removed run loses access at once.
pub trait RunAuthority: Send + Sync + 'static {
    /// The run holding `token`, if any.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Arc<RunContext>>>;

    /// An upstream answered 401 to a request that carried `grants`' secrets
    /// for `run_id`: a cached value may be stale, so the next request
    /// should resolve it again.
    fn credential_rejected(&self, run_id: &str, grants: &[String]) {
        let _ = (run_id, grants);
    }
}
