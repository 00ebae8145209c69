//! What did not go as a run's program asked, kept per run for its
//! `keyward run` to report when the program ends: requests keyward refused
//! (with the rule and what would allow them), requests whose upstream could
//! not be reached or trusted (with the setting that fixes it), and requests
//! to a granted host on a port its grant does not cover, which went out
//! with nothing injected. Bounded per run; summed by kind, target and rule.
//! `keyward run --verbose` waits on them as they are noted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_api::{RunProblem, RunProblems};
use keyward_proxy::EgressEvent;
use tokio::sync::watch;

use crate::frozen::Frozen;

/// Distinct problems kept per run; more are counted into the last one.
const MAX_PROBLEMS: usize = 32;

/// The runs' problems, by run id.
pub struct RunReports {
    runs: Mutex<HashMap<String, RunReport>>,
    /// Bumped at every change of any run's report, so a waiter (who
    /// subscribed before looking) never misses one.
    changed: watch::Sender<u64>,
    /// The daemon is stopping: waiters answer at once.
    closing: std::sync::atomic::AtomicBool,
}

/// One run's problems, and how many requests were noted in all.
#[derive(Default)]
struct RunReport {
    problems: Vec<RunProblem>,
    noted: u64,
}

impl Default for RunReports {
    fn default() -> Self {
        Self {
            runs: Mutex::default(),
            changed: watch::Sender::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }
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
        let report = runs.entry(event.run_id.clone()).or_default();
        report.noted = report.noted.saturating_add(1);
        let problems = &mut report.problems;
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
        drop(runs);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The run's problems so far.
    pub fn peek(&self, run_id: &str) -> Vec<RunProblem> {
        self.snapshot(run_id).problems
    }

    fn snapshot(&self, run_id: &str) -> RunProblems {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(run_id).map_or(
            RunProblems {
                noted: 0,
                problems: Vec::new(),
            },
            |r| RunProblems {
                noted: r.noted,
                problems: r.problems.clone(),
            },
        )
    }

    /// The run's problems once more than `seen` requests were noted, or
    /// as they are when `wait` passes (or the run's report is taken).
    pub async fn wait_past(&self, run_id: &str, seen: u64, wait: Duration) -> RunProblems {
        // Subscribed before looking: a change between the look and the
        // wait still wakes it.
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = self.snapshot(run_id);
            if now.noted > seen || self.closing.load(std::sync::atomic::Ordering::Acquire) {
                return now;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.snapshot(run_id),
            }
        }
    }

    /// Answers every waiter now and any later one at once (the daemon is
    /// stopping, and must not wait on followers).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The run's problems, forgotten here (the run is over).
    pub fn take(&self, run_id: &str) -> Vec<RunProblem> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let taken = runs.remove(run_id).unwrap_or_default().problems;
        drop(runs);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        taken
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
                        "add {:?} to the grant's hosts (a host without a port means 443)",
                        format!("{}:{}", event.host, event.port)
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
                "keyward run --allow {} (or a grant for it, or --network permissive)",
                shell_word(&target)
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

/// `text` as one shell word: as it is when it holds only what host names
/// and ports are made of, else single-quoted. The target comes from the
/// program's request, and a suggested command is pasted into a shell
/// outside any sandbox: `$(...)` in a host name must stay text.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
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

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn a_suggested_command_keeps_a_hostile_host_name_as_text() {
        assert_eq!(shell_word("api.example.com:443"), "api.example.com:443");
        assert_eq!(shell_word("[::1]:8443"), "[::1]:8443");
        assert_eq!(shell_word("$(id)z.test:80"), "'$(id)z.test:80'");
        assert_eq!(
            shell_word("a$(touch$IFS'pwn')b.test:443"),
            "'a$(touch$IFS'\\''pwn'\\'')b.test:443'"
        );
        assert_eq!(shell_word(""), "''");
    }
}
