//! Verified CI runner identity.
//!
//! A caller may send `runner_auth` with an evaluation or a run: either
//! runner claims signed with a shared HMAC key, or a CI provider's OIDC ID
//! token. [`Identity::verify`] checks it and yields [`Verified`] claims, or
//! an [`AuthFailure`] naming the check that failed. Only verified claims
//! ever reach policy.
#![forbid(unsafe_code)]

mod claims;
mod config;
mod failure;
#[doc(hidden)]
pub mod fuzzing;
mod hmac;
mod jwks;
mod oidc;

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

pub use claims::{KNOWN_CLAIMS, RunnerClaims};
pub use config::{AuthConfig, OidcConfig, Provider};
pub use failure::{AuthFailure, Check};
pub use hmac::{HMAC_ALGORITHM, HmacKey, key_bytes};
pub use oidc::OIDC_ALGORITHM;

/// The variable that may hold the HMAC runner key in the daemon's
/// environment.
pub const HMAC_KEY_ENV: &str = "KEYWARD_RUNNER_AUTH_HMAC_KEY";
/// The key id when `auth.runner_key_id` is not set.
pub const DEFAULT_KEY_ID: &str = "default";

/// Verified runner claims and how they were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The claims.
    pub claims: RunnerClaims,
    /// `HMAC-SHA256` or `OIDC-JWT`.
    pub algorithm: &'static str,
    /// The HMAC key id, or the `kid` of the key that signed the token.
    pub key_id: String,
    /// The token's issuer (OIDC only).
    pub issuer: Option<String>,
}

impl Verified {
    /// How the claims were verified, for the decision record: algorithm,
    /// key id and issuer, never the token or signature.
    pub fn provenance(&self) -> Value {
        let mut out = Map::new();
        out.insert("algorithm".into(), self.algorithm.into());
        out.insert("key_id".into(), self.key_id.clone().into());
        if let Some(issuer) = &self.issuer {
            out.insert("issuer".into(), issuer.clone().into());
        }
        Value::Object(out)
    }
}

/// The configured ways to verify runner auth.
#[derive(Default)]
pub struct Identity {
    required: bool,
    hmac: Option<hmac::HmacKey>,
    oidc: Option<oidc::OidcVerifier>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("required", &self.required)
            .field("hmac", &self.hmac)
            .field("oidc", &self.oidc.as_ref().map(|o| &o.issuer))
            .finish()
    }
}

/// A config error: the dotted key at fault and what was expected.
pub type ConfigError = (String, String);

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        (
            key.to_owned(),
            format!("expected a duration such as \"60s\", got {text:?}: {e}"),
        )
    })
}

impl Identity {
    /// Builds the verifiers from `[auth]`. Relative files are relative to
    /// `base_dir`; `env_key` is the value of [`HMAC_KEY_ENV`], if set.
    pub fn from_config(
        config: &AuthConfig,
        base_dir: &Path,
        env_key: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let key_id = config.runner_key_id.as_deref().unwrap_or(DEFAULT_KEY_ID);
        let hmac_text = match (&config.runner_hmac_key_file, env_key) {
            (Some(_), Some(_)) => {
                return Err((
                    "auth.runner_hmac_key_file".to_owned(),
                    format!("set the runner key in the file or in {HMAC_KEY_ENV}, not both"),
                ));
            }
            (Some(file), None) => {
                let path = base_dir.join(file);
                Some(zeroize::Zeroizing::new(
                    std::fs::read_to_string(&path).map_err(|e| {
                        (
                            "auth.runner_hmac_key_file".to_owned(),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?,
                ))
            }
            (None, Some(text)) => Some(zeroize::Zeroizing::new(text.to_owned())),
            (None, None) => None,
        };
        let hmac = match hmac_text {
            Some(text) => Some(
                hmac::HmacKey::new(key_id, &text)
                    .map_err(|e| ("auth.runner_hmac_key_file".to_owned(), e))?,
            ),
            None if config.runner_key_id.is_some() => {
                return Err((
                    "auth.runner_key_id".to_owned(),
                    format!(
                        "set, but there is no key: set auth.runner_hmac_key_file or {HMAC_KEY_ENV}"
                    ),
                ));
            }
            None => None,
        };
        let oidc = config
            .oidc
            .as_ref()
            .map(|o| oidc_verifier(o, base_dir))
            .transpose()?;
        if config.require_runner_auth && hmac.is_none() && oidc.is_none() {
            return Err((
                "auth.require_runner_auth".to_owned(),
                format!(
                    "runner auth is required but no way to verify it is configured: set \
                     auth.runner_hmac_key_file (or {HMAC_KEY_ENV}) or [auth.oidc]"
                ),
            ));
        }
        Ok(Self {
            required: config.require_runner_auth,
            hmac,
            oidc,
        })
    }

    /// Whether every evaluation needs verified runner auth.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The same verifiers, with runner auth required (`daemon start
    /// --require-runner-auth`).
    pub fn require(&mut self) {
        self.required = true;
    }

    /// Whether any way to verify runner auth is configured.
    pub fn configured(&self) -> bool {
        self.hmac.is_some() || self.oidc.is_some()
    }

    /// Checks `runner_auth` (the request's field, as sent). `Ok(None)` when
    /// none was sent.
    pub async fn verify(
        &self,
        runner_auth: &Map<String, Value>,
    ) -> Result<Option<Verified>, AuthFailure> {
        if runner_auth.is_empty() {
            return Ok(None);
        }
        let not_configured = |what: &str| {
            AuthFailure::new(
                Check::NotConfigured,
                format!("this daemon has no {what} configured"),
            )
        };
        match runner_auth.get("algorithm").and_then(Value::as_str) {
            Some(HMAC_ALGORITHM) => {
                let key = self
                    .hmac
                    .as_ref()
                    .ok_or_else(|| not_configured("runner HMAC key (auth.runner_hmac_key_file)"))?;
                let claims = key.verify(runner_auth)?;
                Ok(Some(Verified {
                    claims,
                    algorithm: HMAC_ALGORITHM,
                    key_id: key.key_id().to_owned(),
                    issuer: None,
                }))
            }
            Some(OIDC_ALGORITHM) => {
                let oidc = self
                    .oidc
                    .as_ref()
                    .ok_or_else(|| not_configured("OIDC issuer ([auth.oidc])"))?;
                let token = oidc.verify(runner_auth).await?;
                Ok(Some(Verified {
                    claims: token.claims,
                    algorithm: OIDC_ALGORITHM,
                    key_id: token.kid,
                    issuer: Some(oidc.issuer.clone()),
                }))
            }
            other => Err(AuthFailure::new(
                Check::Algorithm,
                format!(
                    "runner_auth.algorithm is {}; expected \"{HMAC_ALGORITHM}\" (signed claims) or \
                     \"{OIDC_ALGORITHM}\" (a CI provider's token)",
                    other.map_or("absent".to_owned(), |a| format!("{a:?}"))
                ),
            )),
        }
    }
}

fn oidc_verifier(config: &OidcConfig, base_dir: &Path) -> Result<oidc::OidcVerifier, ConfigError> {
    let key = |name: &str| format!("auth.oidc.{name}");
    if config.issuer.is_empty() {
        return Err((
            key("issuer"),
            "expected the issuer URL tokens carry as iss".to_owned(),
        ));
    }
    if config.audience.is_empty() {
        return Err((
            key("audience"),
            "expected the audience tokens carry as aud".to_owned(),
        ));
    }
    let mut algorithms = Vec::new();
    for name in &config.algorithms {
        algorithms.push(match name.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => {
                return Err((
                    key("algorithms"),
                    format!("{name:?} is not supported; expected RS256 and/or ES256"),
                ));
            }
        });
    }
    if algorithms.is_empty() {
        return Err((key("algorithms"), "expected RS256 and/or ES256".to_owned()));
    }
    let bounds = jwks::Bounds {
        min_refetch: duration(&key("jwks_min_refetch"), &config.jwks_min_refetch)?,
        ttl: duration(&key("jwks_cache_ttl"), &config.jwks_cache_ttl)?,
        max_bytes: usize::try_from(config.jwks_max_bytes)
            .ok()
            .filter(|n| (1024..=16 * 1024 * 1024).contains(n))
            .ok_or_else(|| {
                (
                    key("jwks_max_bytes"),
                    format!("expected 1024 to 16777216, got {}", config.jwks_max_bytes),
                )
            })?,
    };
    let jwks = match (&config.jwks_url, &config.jwks_file) {
        (Some(url), None) => {
            let ca = config.jwks_ca_file.as_ref().map(|f| base_dir.join(f));
            jwks::Jwks::from_url(url, ca.as_deref(), bounds).map_err(|e| (key("jwks_url"), e))?
        }
        (None, Some(file)) => jwks::Jwks::from_file(&base_dir.join(file), bounds)
            .map_err(|e| (key("jwks_file"), e))?,
        _ => {
            return Err((
                key("jwks_url"),
                "set exactly one of jwks_url (https) and jwks_file".to_owned(),
            ));
        }
    };
    let mut require = Vec::new();
    for (name, pattern) in &config.require {
        let glob =
            keyward_policy::Glob::new(pattern).map_err(|e| (key(&format!("require.{name}")), e))?;
        require.push((name.clone(), glob));
    }
    Ok(oidc::OidcVerifier {
        provider: config.provider,
        issuer: config.issuer.clone(),
        audience: config.audience.clone(),
        algorithms,
        leeway: duration(&key("leeway"), &config.leeway)?,
        require,
        jwks,
        verified: oidc::VerifiedTokens::default(),
    })
}
