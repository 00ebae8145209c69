//! Runner auth on the admin API: verifies what a caller sends as
//! `runner_auth` (evaluations and runs alike), and turns a failure into the
//! block decision `runner_auth.invalid` when runner auth is required.

use keyward_api::{Decision, DecisionResponse, Severity};
use keyward_identity::{AuthFailure, Check, Verified};
use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::state::AppState;
use keyward_runs::RunRecord;

/// The `algorithm` recorded for claims a run was bound to when it was
/// created (the `key_id` is then the run's id).
const RUN_ALGORITHM: &str = "run";

/// The rule id of a decision refused for missing or invalid runner auth.
pub(crate) const INVALID_RULE: &str = "runner_auth.invalid";

/// What came of a request's `runner_auth`.
pub(crate) struct RunnerAuth {
    /// The verified identity, if any.
    pub verified: Option<Verified>,
    /// Why the auth sent (or its absence, when required) was refused.
    pub failure: Option<AuthFailure>,
    /// Whether runner auth is required (config or `--require-runner-auth`).
    pub required: bool,
}

impl RunnerAuth {
    /// Verifies `sent` (the request's `runner_auth`, already taken out of
    /// the request so it is never recorded). A caller inside a run that
    /// sends none speaks with the identity its run was bound to.
    pub(crate) async fn check(
        state: &AppState,
        sent: &Map<String, Value>,
        run: Option<&RunRecord>,
    ) -> Self {
        let identity = state.config().identity.clone();
        let required = state.require_runner_auth || identity.required();
        // Inside a run bound to an identity, that identity decides: what a
        // process of the run sends (another identity, or broken auth to
        // shed the run's) is ignored.
        if let Some((run, claims)) = run.and_then(|r| Some((r, r.runner.clone()?))) {
            if !sent.is_empty() {
                tracing::info!(
                    run = run.id,
                    "runner auth sent from inside a run bound to an identity is ignored: the run's identity decides"
                );
            }
            return Self {
                verified: Some(Verified {
                    claims,
                    algorithm: RUN_ALGORITHM,
                    key_id: run.id.clone(),
                    issuer: None,
                }),
                failure: None,
                required,
            };
        }
        let (verified, failure) = match identity.verify(sent).await {
            Ok(Some(v)) => (Some(v), None),
            Ok(None) if required => (
                None,
                Some(AuthFailure {
                    check: Check::Missing,
                    detail: "runner auth is required and the request has none".to_owned(),
                }),
            ),
            Ok(None) => (None, None),
            Err(e) => {
                tracing::warn!("runner auth refused: {e}");
                (None, Some(e))
            }
        };
        Self {
            verified,
            failure,
            required,
        }
    }

    /// The failure that must refuse the request, if runner auth is
    /// required and did not verify.
    pub(crate) fn refusal(&self) -> Option<&AuthFailure> {
        self.failure.as_ref().filter(|_| self.required)
    }

    /// The verified claims as policy matches them.
    pub(crate) fn claims(&self) -> Option<Map<String, Value>> {
        self.verified.as_ref().map(|v| v.claims.to_json())
    }

    /// How they were verified, as `runner_auth.*` matches it.
    pub(crate) fn provenance(&self) -> Option<Map<String, Value>> {
        match self.verified.as_ref()?.provenance() {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    /// Adds what the decision record keeps of runner auth: the verified
    /// claims as `runner`, how they were verified as `runner_auth`, or the
    /// failed check as `runner_auth_failure`. Never the token or signature.
    pub(crate) fn record(&self, data: &mut Value) {
        let Some(obj) = data.as_object_mut() else {
            return;
        };
        if let Some(v) = &self.verified {
            obj.insert("runner".into(), Value::Object(v.claims.to_json()));
            obj.insert("runner_auth".into(), v.provenance());
        }
        if let Some(f) = &self.failure {
            obj.insert(
                "runner_auth_failure".into(),
                serde_json::json!({"check": f.check.as_str(), "detail": f.detail}),
            );
        }
    }
}

/// Refuses a run whose runner auth did not verify (sent but invalid, or
/// missing when required).
pub(crate) fn refuse_run(failure: &AuthFailure) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "runner_auth_invalid",
        format!("the run is refused: {failure}"),
    )
}

/// Checks the `require_runner` of each grant a run asks for against the
/// run's verified claims.
pub(crate) fn check_grant_requirements(
    grants: &std::collections::BTreeMap<String, keyward_config::grants::Grant>,
    names: &[String],
    claims: Option<&keyward_identity::RunnerClaims>,
) -> Result<(), ApiError> {
    for name in names {
        let Some(grant) = grants.get(name) else {
            continue;
        };
        for (claim, pattern) in &grant.require_runner {
            let value = claims.and_then(|c| c.get(claim));
            let ok = value.is_some_and(|v| {
                keyward_policy::Glob::new(pattern)
                    .is_ok_and(|g| g.matches(v, keyward_policy::Mode::Text))
            });
            if !ok {
                let has = match (claims, value) {
                    (None, _) => "the run has no verified runner identity (send runner auth: \
                                  `keyward run --oidc-token-file F` or `--runner-auth-file F`)"
                        .to_owned(),
                    (Some(_), None) => format!("its verified identity has no {claim} claim"),
                    (Some(_), Some(v)) => format!("its verified {claim} is {v:?}"),
                };
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "grant_requires_runner",
                    format!(
                        "grant {name} requires a verified runner whose {claim} matches {pattern:?}; {has}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Turns `resp` into the block for `failure`.
pub(crate) fn block(resp: &mut DecisionResponse, failure: &AuthFailure) {
    resp.decision = Decision::Block;
    resp.rule_id = INVALID_RULE.to_owned();
    resp.severity = Severity::Critical;
    resp.reason = format!("{failure}; runner auth is required (auth.require_runner_auth)");
    resp.approver_group = None;
    resp.matched_command = None;
}
