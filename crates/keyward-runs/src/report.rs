//! What did not go as a run's program asked, kept per run for its
//! `keyward run` to report when the program ends: requests keyward refused
//! (with the rule and what would allow them), requests whose upstream could
//! not be reached or trusted (with the setting that fixes it), and requests
//! to a granted host on a port its grant does not cover, which went out
//! with nothing injected. Bounded per run; summed by kind, target and rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_api::RunProblem;
use keyward_proxy::EgressEvent;

use crate::frozen::Frozen;

/// Distinct problems kept per run; more are counted into the last one.
const MAX_PROBLEMS: usize = 32;

/// The runs' problems, by run id.
#[derive(Default)]
pub struct RunReports {
    runs: Mutex<HashMap<String, Vec<RunProblem>>>,
}

impl RunReports {
    /// Notes `event` if it did not go as asked; `frozen` gives the run's
    /// authority (its grants' hosts), asked only for a request that went
    /// out with nothing injected.
    pub fn note(&self, event: &EgressEvent, frozen: impl FnOnce() -> Option<Arc<Frozen>>) {
        let Some(problem) = classify(event, frozen) else {
            return;
        };
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let problems = runs.entry(event.run_id.clone()).or_default();
        let same = |p: &&mut RunProblem| {
            p.kind == problem.kind && p.target == problem.target && p.rule == problem.rule
        };
        if let Some(known) = problems.iter_mut().find(same) {
            known.count = known.count.saturating_add(1);
        } else if problems.len() < MAX_PROBLEMS {
            problems.push(problem);
        } else if let Some(last) = problems.last_mut() {
            last.count = last.count.saturating_add(1);
        }
    }

    /// The run's problems so far.
    pub fn peek(&self, run_id: &str) -> Vec<RunProblem> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(run_id).cloned().unwrap_or_default()
    }

    /// The run's problems, forgotten here (the run is over).
    pub fn take(&self, run_id: &str) -> Vec<RunProblem> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.remove(run_id).unwrap_or_default()
    }
}

/// What `event` says went wrong, if anything.
fn classify(
    event: &EgressEvent,
    frozen: impl FnOnce() -> Option<Arc<Frozen>>,
) -> Option<RunProblem> {
    let target = format!("{}:{}", event.host, event.port);
    let problem = |kind: &str, rule: Option<String>, detail: String, fix: Option<String>| {
        Some(RunProblem {
            kind: kind.to_owned(),
            target: target.clone(),
            rule,
            count: 1,
            detail,
            fix,
        })
    };
    if let Some(rule) = &event.blocked {
        let (detail, fix) = refusal_words(rule, event);
        let kind = if rule.starts_with("upstream_") {
            "failed"
        } else {
            "refused"
        };
        return problem(kind, Some(rule.clone()), detail, fix);
    }
    if let Some(error) = &event.error
        && event.status >= 500
    {
        return problem("failed", None, error.clone(), trust_fix(error, &event.host));
    }
    if event.injected.is_empty()
        && event.status < 400
        && let Some(frozen) = frozen()
    {
        for grant in frozen.grants.values() {
            if grant.hosts.iter().any(|h| h.matches_host(&event.host)) {
                let covered: Vec<String> = grant.hosts.iter().map(ToString::to_string).collect();
                return problem(
                    "not_injected",
                    Some(format!("grant {}", grant.name)),
                    format!(
                        "grant {} covers {}, not port {}: the request went out without the secret",
                        grant.name,
                        covered.join(", "),
                        event.port
                    ),
                    Some(format!(
                        "add \"{}:{}\" to the grant's hosts (a host without a port means 443)",
                        event.host, event.port
                    )),
                );
            }
        }
    }
    None
}

/// What a refusal rule means and what would change it.
fn refusal_words(rule: &str, event: &EgressEvent) -> (String, Option<String>) {
    let target = format!("{}:{}", event.host, event.port);
    let error = event.error.clone().unwrap_or_default();
    match rule {
        "network.strict" => (
            format!("{target} is not among the run's grants or --allow hosts (strict network)"),
            Some(format!(
                "keyward run --allow {target} (or a grant for it, or --network permissive)"
            )),
        ),
        "network.metadata" => (
            "cloud metadata addresses are refused whatever a run allows".to_owned(),
            None,
        ),
        "plaintext_refused" => (
            "the secret would have gone over plain HTTP".to_owned(),
            Some("use https://, or set plaintext = true in the grant".to_owned()),
        ),
        "vault_sealed" => (
            "the vault is sealed".to_owned(),
            Some("keyward vault unseal".to_owned()),
        ),
        "secret_unavailable" => (
            format!("a grant's secret could not be resolved: {error}"),
            Some("keyward grant list shows why".to_owned()),
        ),
        "upstream_unreachable" | "upstream_unresolved" | "upstream_timeout" | "upstream_lost" => {
            let fix = trust_fix(&error, &event.host);
            (format!("the upstream failed: {error}"), fix)
        }
        _ => match &event.decision {
            Some(decision) => (
                format!("refused by the policy ({rule})"),
                Some(format!(
                    "keyward eval shows the decision; the policy is {}",
                    decision.policy_id
                )),
            ),
            None => (format!("refused ({rule})"), None),
        },
    }
}

/// The setting that fixes an upstream TLS trust failure, when `error` is
/// one.
fn trust_fix(error: &str, host: &str) -> Option<String> {
    let untrusted = [
        "UnknownIssuer",
        "unknown issuer",
        "certificate",
        "Certificate",
    ]
    .iter()
    .any(|w| error.contains(w));
    untrusted.then(|| {
        format!(
            "if {host} uses a private CA, add its certificate to proxy.upstream_ca \
             (then keyward daemon reload)"
        )
    })
}
