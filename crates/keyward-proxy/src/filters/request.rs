//! request_filter: the network rules, the policy, and the checks that
//! decide whether a credential may go to this destination at all.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request};
use keyward_api::{Decision, EvaluateRequest, Network};

use crate::context::{Credential, RunContext, Scope};
use crate::events::PolicyDecision;
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, Rule};
use crate::request_ctx::RequestCtx;
use crate::rules::is_metadata;
use crate::run_token::RunToken;

/// Whether the request may go at all: the run token never goes upstream,
/// a CONNECT here is refused, then the network rules, the policy, the
/// evidence log's room, and where each credential may go (which sets
/// `ctx.scopes`). The request comes back in parts for the upstream filter.
pub(crate) fn filter(
    proxy: &Proxy,
    ctx: &mut RequestCtx<'_>,
    req: Request<Incoming>,
) -> Result<(Parts, Incoming), Refusal> {
    let (run, target) = (ctx.run, ctx.target);
    // Not in the method, the host, the URL or a header (its body is
    // guarded as it streams).
    if let Some(token) = &run.token
        && let Some(place) = token.in_request(req.method(), target, req.uri(), req.headers())
    {
        return Err(RunToken::refusal(&place));
    }
    // Here means inside an intercepted tunnel, on a broker stream or to a
    // base URL: a raw tunnel from a place that already is one.
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            Rule::ConnectNotHere,
            "keyward refused CONNECT here: tunnels are opened on the proxy itself\n".to_owned(),
        ));
    }
    network_check(run, target)?;
    let (decision, verdict) = policy_check(run, req.method().as_str(), target, req.uri().path());
    ctx.event.decision = decision;
    verdict?;
    if let Some(refusal) = proxy.unrecordable(&ctx.event) {
        return Err(refusal);
    }
    ctx.scopes = credential_scopes(run, target)?;
    let (parts, body) = req.into_parts();
    if ctx.scopes.contains(&Scope::Allowed) {
        authority_check(&parts, target)?;
    }
    Ok((parts, body))
}

/// The network rules: metadata endpoints always denied; in strict mode
/// only hosts the run names.
pub(crate) fn network_check(run: &RunContext, target: &Target) -> Result<(), Refusal> {
    let (host, port) = (&target.host, target.port);
    if is_metadata(host) {
        return Err(Refusal::new(
            Rule::NetworkMetadata,
            format!(
                "keyward blocked {host}: cloud metadata endpoints are always denied (they hand out credentials)\n"
            ),
        ));
    }
    if run.network == Network::Strict && !run.names_host(host, port) {
        return Err(Refusal::new(
            Rule::NetworkStrict,
            format!(
                "keyward blocked {host}:{port}: this run is in strict network mode and {host} is not allowed; \
                 rerun with `--allow {host}` or add a grant for it\n"
            ),
        ));
    }
    Ok(())
}

/// The policy step: the request as `http_request` with target
/// `host[:port]/path` and the method as operation. The run's own allow
/// list comes ahead of the pack: a host the run names is allowed unless a
/// rule of the pack blocks it or asks for approval explicitly.
pub(crate) fn policy_check(
    run: &RunContext,
    method: &str,
    target: &Target,
    path: &str,
) -> (Option<PolicyDecision>, Result<(), Refusal>) {
    let Some(policy) = &run.policy else {
        return (None, Ok(()));
    };
    let (host, port) = (&target.host, target.port);
    let subject = if port == 443 || port == 80 {
        format!("{host}{path}")
    } else {
        format!("{host}:{port}{path}")
    };
    let req = EvaluateRequest {
        action_type: "http_request".to_owned(),
        target: Some(subject),
        requested_operation: Some(method.to_owned()),
        session_id: Some(run.run_id.clone()),
        verified_runner: run.runner.clone(),
        // The run's identity was verified when it was created; its
        // requests are decided with it, as `POST /v1/evaluate` does.
        verified_runner_auth: run.runner.as_ref().map(|_| {
            serde_json::Map::from_iter([
                ("algorithm".to_owned(), "run".into()),
                ("key_id".to_owned(), run.run_id.clone().into()),
            ])
        }),
        ..EvaluateRequest::default()
    };
    let verdict = policy.evaluate(&req);
    let (decision, rule_id) =
        if verdict.decision() != Decision::Allow && !verdict.explicit && run.names_host(host, port)
        {
            (Decision::Allow, "network.allow")
        } else {
            (verdict.decision(), verdict.rule.id.as_str())
        };
    let recorded = PolicyDecision {
        decision,
        rule_id: rule_id.to_owned(),
        policy_id: policy.id().to_owned(),
    };
    let outcome = match decision {
        Decision::Allow => Ok(()),
        Decision::Block => Err(Refusal::new(
            Rule::Policy(rule_id.to_owned()),
            format!(
                "keyward blocked {method} {host}{path}: policy {} rule {rule_id}: {}\n",
                policy.id(),
                verdict.rule.reason
            ),
        )),
        Decision::RequireApproval => Err(Refusal::new(
            Rule::Policy(rule_id.to_owned()),
            format!(
                "keyward blocked {method} {host}{path}: policy {} rule {rule_id} requires approval{}: {}\n",
                policy.id(),
                verdict
                    .rule
                    .approver_group
                    .as_deref()
                    .map(|g| format!(" by {g}"))
                    .unwrap_or_default(),
                verdict.rule.reason
            ),
        )),
    };
    (Some(recorded), outcome)
}

/// Where each of the run's credentials may go for this request; a
/// credential for this destination that may not go in clear refuses the
/// request, and so does a grant for it whose secret is unavailable now
/// (rather than sending the request without it).
fn credential_scopes(run: &RunContext, target: &Target) -> Result<Vec<Scope>, Refusal> {
    let (host, port, tls) = (&target.host, target.port, target.tls);
    let scopes: Vec<Scope> = run
        .credentials
        .iter()
        .map(|c| c.scope(host, port, tls))
        .collect();
    if let Some(cred) = run
        .credentials
        .iter()
        .zip(&scopes)
        .find_map(|(c, s)| (*s == Scope::Cleartext).then_some(c))
    {
        return Err(plaintext_refused(cred, host, port));
    }
    if let Some(w) = run
        .withheld
        .iter()
        .find(|w| w.hosts.iter().any(|h| h.matches(host, port, tls)))
    {
        let rule = if w.sealed {
            Rule::VaultSealed
        } else {
            Rule::SecretUnavailable
        };
        return Err(Refusal::new(
            rule,
            format!(
                "keyward did not send this request: the secret of grant {} is unavailable ({}); \
                 nothing was sent to {host}:{port}\n",
                w.grant,
                if w.sealed {
                    "the vault is sealed: `keyward vault unseal`"
                } else {
                    "see the daemon log"
                }
            ),
        ));
    }
    Ok(scopes)
}

/// A refusal of a request that would carry a grant's secret in clear.
fn plaintext_refused(cred: &Credential, host: &str, port: u16) -> Refusal {
    Refusal::new(
        Rule::PlaintextRefused,
        format!(
            "keyward refused to send grant {}'s secret to {host}:{port} unencrypted; use https://, \
             or set `plaintext = true` in [grants.{}] if this host only speaks plain HTTP\n",
            cred.grant, cred.grant
        ),
    )
}

/// The request's `Host` and URI authority (`:authority` in HTTP/2) must
/// name the destination the grant matched: a front end that routes by
/// `Host` would otherwise take the secret to another tenant.
fn authority_check(parts: &Parts, target: &Target) -> Result<(), Refusal> {
    let (host, port) = (&target.host, target.port);
    let names_target = |claimed: &[u8]| {
        let Ok(authority) = hyper::http::uri::Authority::try_from(claimed) else {
            return false;
        };
        let default_port = if target.tls { 443 } else { 80 };
        !authority.as_str().contains('@')
            && authority.port_u16().unwrap_or(default_port) == port
            && authority
                .host()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(host.trim_end_matches('.'))
    };
    let uri_authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let claimed = uri_authority.into_iter().chain(
        parts
            .headers
            .get_all(header::HOST)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    for name in claimed {
        if !names_target(name) {
            return Err(Refusal::new(
                Rule::HostMismatch,
                format!(
                    "keyward refused this request: it goes to {host}:{port}, where a grant's secret is injected, \
                     but names {:?} as its host; send it with the host it is addressed to\n",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
    }
    Ok(())
}
