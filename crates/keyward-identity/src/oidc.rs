//! OIDC mode: `runner_auth = {algorithm: "OIDC-JWT", token}`, a CI
//! provider's ID token checked against the issuer's keys, then its claims
//! mapped to runner claims.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keyward_policy::{Glob, Mode};
use serde_json::{Map, Value};

use crate::claims::{MAX_VALUE_BYTES, RunnerClaims};
use crate::config::Provider;
use crate::failure::{AuthFailure, Check};
use crate::jwks::Jwks;

/// The `algorithm` of an OIDC envelope.
pub const OIDC_ALGORITHM: &str = "OIDC-JWT";
/// A longer token is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Registered JWT claims, checked here and not copied into runner claims.
const REGISTERED: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti"];
/// Tokens remembered as verified; when full, the memory starts over.
const VERIFIED_TOKENS: usize = 4096;

/// A token that passed every check, remembered by its SHA-256 so a CI job
/// sending the same token with each request pays for the signature once.
/// The time claims are checked again on every use, and the entry counts
/// only while its key is still in the JWKS (refetched as usual).
#[derive(Clone)]
struct Remembered {
    claims: RunnerClaims,
    kid: String,
    exp: u64,
    nbf: Option<u64>,
}

#[derive(Default)]
pub(crate) struct VerifiedTokens(Mutex<HashMap<[u8; 32], Remembered>>);

impl VerifiedTokens {
    fn get(&self, digest: &[u8; 32]) -> Option<Remembered> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    fn put(&self, digest: [u8; 32], token: Remembered) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_TOKENS {
            map.clear();
        }
        map.insert(digest, token);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(crate) struct OidcVerifier {
    pub provider: Provider,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub require: Vec<(String, Glob)>,
    pub jwks: Jwks,
    pub verified: VerifiedTokens,
}

/// What a verified token yields: its mapped claims and the key that
/// signed it.
pub(crate) struct VerifiedToken {
    pub claims: RunnerClaims,
    pub kid: String,
}

impl OidcVerifier {
    pub async fn verify(&self, auth: &Map<String, Value>) -> Result<VerifiedToken, AuthFailure> {
        let token = auth
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthFailure::new(Check::Missing, "runner_auth has no token"))?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::new(
                Check::Malformed,
                format!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .expect("SHA-256 is 32 bytes");
        if let Some(known) = self.verified.get(&digest) {
            return self.reuse(known).await;
        }
        let alg = self.allowed_algorithm(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthFailure::new(Check::Malformed, format!("bad token header: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthFailure::new(Check::KeyId, "the token header has no kid"))?;
        let key = self.jwks.key(&kid).await?;
        if key.alg != alg {
            return Err(AuthFailure::new(
                Check::Algorithm,
                format!(
                    "the token says {alg:?} but key {kid:?} is a {:?} key",
                    key.alg
                ),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| self.failure(e.kind()))?;
        let claims = data.claims;
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
            let now = now_secs();
            if iat > now + self.leeway.as_secs() {
                return Err(AuthFailure::new(
                    Check::NotYetValid,
                    format!("the token was issued in the future (iat {iat}, now {now})"),
                ));
            }
        }
        let mapped = map_claims(self.provider, &claims);
        for (name, glob) in &self.require {
            let value = mapped.get(name);
            if !value.is_some_and(|v| glob.matches(v, Mode::Text)) {
                return Err(AuthFailure::new(
                    Check::ClaimMismatch,
                    format!(
                        "claim {name} = {:?} does not match the required {:?}",
                        value.unwrap_or("(absent)"),
                        glob.as_str()
                    ),
                ));
            }
        }
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            self.verified.put(
                digest,
                Remembered {
                    claims: mapped.clone(),
                    kid: kid.clone(),
                    exp,
                    nbf: claims.get("nbf").and_then(Value::as_u64),
                },
            );
        }
        Ok(VerifiedToken {
            claims: mapped,
            kid,
        })
    }

    /// A token verified before: only its time claims and its key's
    /// presence can have changed since.
    async fn reuse(&self, known: Remembered) -> Result<VerifiedToken, AuthFailure> {
        let (now, leeway) = (now_secs(), self.leeway.as_secs());
        if now > known.exp + leeway {
            return Err(self.failure(&ErrorKind::ExpiredSignature));
        }
        if known.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(self.failure(&ErrorKind::ImmatureSignature));
        }
        // Refetched like any lookup when the cache is stale: a key the
        // issuer retired ends its tokens too.
        self.jwks.key(&known.kid).await?;
        Ok(VerifiedToken {
            claims: known.claims,
            kid: known.kid,
        })
    }

    /// The token's `alg`, read before anything else, if it is allowed.
    /// `none`, the HMAC family (a public key used as an HMAC secret) and
    /// anything not configured fail here.
    fn allowed_algorithm(&self, token: &str) -> Result<Algorithm, AuthFailure> {
        let malformed = || AuthFailure::new(Check::Malformed, "the token is not a JWT");
        let header = token.split('.').next().ok_or_else(malformed)?;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed())?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| malformed())?;
        let name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        self.algorithms
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == name)
            .ok_or_else(|| {
                AuthFailure::new(
                    Check::Algorithm,
                    format!(
                        "alg {name:?} is not allowed; allowed: {}",
                        self.algorithms
                            .iter()
                            .map(|a| format!("{a:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    fn failure(&self, kind: &ErrorKind) -> AuthFailure {
        let (check, detail) = match kind {
            ErrorKind::InvalidSignature => {
                (Check::Signature, "the signature does not verify".to_owned())
            }
            ErrorKind::InvalidIssuer => (
                Check::Issuer,
                format!("iss is not the configured issuer {:?}", self.issuer),
            ),
            ErrorKind::InvalidAudience => (
                Check::Audience,
                format!("aud is not the configured audience {:?}", self.audience),
            ),
            ErrorKind::ExpiredSignature => (
                Check::Expired,
                format!("exp has passed (leeway {}s)", self.leeway.as_secs()),
            ),
            ErrorKind::ImmatureSignature => (
                Check::NotYetValid,
                format!("nbf lies in the future (leeway {}s)", self.leeway.as_secs()),
            ),
            ErrorKind::InvalidAlgorithm => (
                Check::Algorithm,
                "the algorithm does not fit the key".to_owned(),
            ),
            ErrorKind::MissingRequiredClaim(claim) => {
                (Check::Malformed, format!("the token has no {claim} claim"))
            }
            other => (
                Check::Malformed,
                format!("the token is not valid: {other:?}"),
            ),
        };
        AuthFailure::new(check, detail)
    }
}

/// Maps a verified token's claims to runner claims. Every other string
/// claim (except the registered ones already checked) is kept under its
/// own name.
pub(crate) fn map_claims(provider: Provider, token: &Map<String, Value>) -> RunnerClaims {
    let text = |name: &str| -> Option<String> {
        match token.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut claims = RunnerClaims::default();
    for (name, value) in token {
        if !REGISTERED.contains(&name.as_str())
            && let Value::String(s) = value
            && s.len() <= MAX_VALUE_BYTES
        {
            claims.insert(name, s.clone());
        }
    }
    // A mapped value keeps the runner-claim bound; past it, the claim is
    // left out (not replaced by a same-named claim of the token).
    let mut set = |name: &str, value: Option<String>| match value {
        Some(value) if value.len() <= MAX_VALUE_BYTES => claims.insert(name, value),
        Some(_) => claims.remove(name),
        None => {}
    };
    set("provider", Some(provider.claim().to_owned()));
    match provider {
        Provider::Github => {
            // Same names; `job` is the reusable workflow that runs the job.
            set("job", text("job_workflow_ref"));
            set("runner_name", text("runner_environment"));
        }
        Provider::Gitlab => {
            set("repository", text("project_path"));
            set("workflow", text("ci_config_ref_uri"));
            set("run_id", text("pipeline_id"));
            set("actor", text("user_login"));
            set("job", text("job_id"));
            set("runner_name", text("runner_id"));
            // GitLab's `ref` is a bare name; `ref_type` says what kind.
            let full_ref = match (text("ref_type").as_deref(), text("ref")) {
                (Some("branch"), Some(r)) => Some(format!("refs/heads/{r}")),
                (Some("tag"), Some(r)) => Some(format!("refs/tags/{r}")),
                (_, r) => r,
            };
            set("ref", full_ref);
        }
        Provider::Azure => {
            // `sub` is `sc://ORGANIZATION/PROJECT/SERVICE_CONNECTION`.
            let sub = text("sub").unwrap_or_default();
            let parts: Vec<&str> = sub
                .strip_prefix("sc://")
                .map(|rest| rest.splitn(3, '/').collect())
                .unwrap_or_default();
            if let [org, project, connection] = parts[..] {
                set("repository", Some(format!("{org}/{project}")));
                set("workflow", Some(connection.to_owned()));
            }
        }
        Provider::Generic => {}
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn github_claims_map_to_runner_claims() {
        let c = map_claims(
            Provider::Github,
            &obj(serde_json::json!({
                "iss": "https://token.actions.githubusercontent.com", "aud": "keyward",
                "exp": 1, "repository": "acme/app", "workflow": "ci", "run_id": "42",
                "run_attempt": "1", "ref": "refs/heads/main", "sha": "abc", "actor": "octo",
                "job_workflow_ref": "acme/app/.github/workflows/ci.yml@refs/heads/main",
                "runner_environment": "github-hosted", "repository_owner": "acme"
            })),
        );
        assert_eq!(c.get("provider"), Some("github-actions"));
        assert_eq!(c.get("repository"), Some("acme/app"));
        assert_eq!(c.get("run_id"), Some("42"));
        assert_eq!(
            c.get("job"),
            Some("acme/app/.github/workflows/ci.yml@refs/heads/main")
        );
        assert_eq!(c.get("repository_owner"), Some("acme"));
        assert_eq!(
            c.get("iss"),
            None,
            "registered claims are not runner claims"
        );
    }

    /// Caught by the `runner_identity` fuzz target's bound check: values
    /// built by a provider's mapping went past the bound other claims keep.
    #[test]
    fn mapped_claims_keep_the_value_bound() {
        let long = "a".repeat(MAX_VALUE_BYTES + 1);
        let c = map_claims(
            Provider::Github,
            &obj(serde_json::json!({"job_workflow_ref": long, "job": "short"})),
        );
        assert_eq!(c.get("job"), None);
        let c = map_claims(
            Provider::Gitlab,
            &obj(serde_json::json!({
                "project_path": long, "repository": "acme/app", "ref_type": "branch",
                "ref": "r".repeat(MAX_VALUE_BYTES - 5)
            })),
        );
        assert_eq!((c.get("repository"), c.get("ref")), (None, None));
        let c = map_claims(
            Provider::Azure,
            &obj(serde_json::json!({"sub": format!("sc://acme/app/{long}")})),
        );
        assert_eq!(
            (c.get("repository"), c.get("workflow")),
            (Some("acme/app"), None)
        );
        assert!(c.iter().all(|(_, v)| v.len() <= MAX_VALUE_BYTES));
    }

    #[test]
    fn gitlab_and_azure_claims_map_to_runner_claims() {
        let c = map_claims(
            Provider::Gitlab,
            &obj(serde_json::json!({
                "project_path": "acme/app", "pipeline_id": "77", "ref": "main",
                "ref_type": "branch", "sha": "abc", "user_login": "dev", "job_id": "9",
                "runner_id": 12
            })),
        );
        assert_eq!(
            (c.get("repository"), c.get("ref"), c.get("run_id")),
            (Some("acme/app"), Some("refs/heads/main"), Some("77"))
        );
        assert_eq!(
            (c.get("actor"), c.get("job"), c.get("runner_name")),
            (Some("dev"), Some("9"), Some("12"))
        );
        let c = map_claims(
            Provider::Azure,
            &obj(serde_json::json!({"sub": "sc://acme/app/prod-connection"})),
        );
        assert_eq!(
            (c.get("repository"), c.get("workflow"), c.get("provider")),
            (
                Some("acme/app"),
                Some("prod-connection"),
                Some("azure-pipelines")
            )
        );
    }
}
