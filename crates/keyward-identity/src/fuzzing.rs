//! Entry points for the runner identity fuzz target in `fuzz/`: the JWKS
//! parser, an OIDC verifier over an in-memory JWKS (no network), and the
//! provider claim mapping. Not an API (hidden from the docs); it follows
//! the code it reaches.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::claims::RunnerClaims;
use crate::config::Provider;
use crate::jwks::{Bounds, Jwks};
use crate::oidc::{OidcVerifier, VerifiedTokens};
use crate::{Identity, jwks};

/// The `iss` the verifier of [`oidc_identity`] expects.
pub const ISSUER: &str = "https://token.actions.githubusercontent.com";
/// The `aud` it expects.
pub const AUDIENCE: &str = "keyward";

/// The usable keys of a JWKS document, as `(kid, alg)`.
pub fn jwks_keys(document: &[u8]) -> Result<Vec<(String, String)>, String> {
    let keys = jwks::parse(document)?;
    Ok(keys
        .iter()
        .map(|(kid, key)| (kid.clone(), format!("{:?}", key.alg)))
        .collect())
}

/// An identity verifying `provider`'s tokens (RS256 and ES256, issuer
/// [`ISSUER`], audience [`AUDIENCE`], 60 s leeway) against the JWKS
/// `document`, as `[auth.oidc]` with a `jwks_file` builds it.
pub fn oidc_identity(provider: Provider, document: &[u8]) -> Result<Identity, String> {
    let bounds = Bounds {
        min_refetch: Duration::from_secs(60),
        ttl: Duration::from_secs(3600),
        max_bytes: document.len(),
    };
    Ok(Identity {
        required: true,
        hmac: None,
        oidc: Some(OidcVerifier {
            provider,
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: Duration::from_secs(60),
            require: Vec::new(),
            jwks: Jwks::from_document(document, bounds)?,
            verified: VerifiedTokens::default(),
        }),
    })
}

/// A verified token's claims as `provider`'s runner claims.
pub fn map_claims(provider: Provider, token: &Map<String, Value>) -> RunnerClaims {
    crate::oidc::map_claims(provider, token)
}
