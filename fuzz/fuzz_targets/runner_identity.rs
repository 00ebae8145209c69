//! Runner identity (`runner_auth`), with no network. The input is a
//! provider byte, then four parts split by `0xFF`: a JWKS document, an
//! OIDC token, a token's claims (JSON, so that the fuzzer edits them
//! directly rather than through base64) and an HMAC envelope (JSON).
//! - The JWKS parser takes only RS256 (RSA) and ES256 (P-256) keys with a
//!   `kid`, meant for signatures; symmetric keys above all never.
//! - A token is verified against that JWKS (or a built-in one when it does
//!   not parse) and is never accepted: the seeds carry no valid signature
//!   for a live token (theirs have expired) and the fuzzer cannot make one.
//!   A refusal never repeats the token's signature.
//! - The claims (and the token's own), mapped as if verified: the
//!   provider claim is the provider's, registered claims stay out, every
//!   value keeps the runner-claim bound, and the provider's own mappings
//!   hold.
//! - An HMAC envelope passes only with the signature of its claims under
//!   the key; claims have the shape the canonical form needs (checked
//!   here independently), their canonical bytes are sorted compact JSON,
//!   and the same claims signed with the key pass (one digit off fails).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use keyward_fuzz::{Input, block_on};
use keyward_identity::fuzzing::{jwks_keys, map_claims, oidc_identity};
use keyward_identity::{AuthConfig, Check, HmacKey, Identity, Provider, RunnerClaims};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Used when the input's JWKS does not parse. The private halves of
/// these keys were thrown away.
const KEYS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"rsa-1","n":"q6yWX1PTe8j3-Ctpg9SXAxscDGGgMZGFEAGazsRnFVrTBADzTNOcmfkl5w_Yqgl-02rYmj5KPQycEUCPeq_c7dRAGewarCxASCbMg6z-RHOWv-k6BIKyopzaitEbUCn3JoOVcruSH2JGxqvpzFfIluuLxlJVv4fsvvkHQR3_sa6aHWJ3DbgPdNI2TAGhwotdJf_GluYZCR7xHmWrNZUbIY5FuWcO2UpWiBOnvoaz5_8evQM-JyS56OFSRD9yBFow22LB95vCFlf72DwJrUBMXQBOvwBEOM8VclxXyYzs_9Zd3XL5eI5gFaMju2TAuHEjlPi8nQ52stJdaw_j-Qaz5w","e":"AQAB"},{"kty":"EC","crv":"P-256","use":"sig","kid":"ec-1","x":"3JZkJ61p_P5ABTjo1aoK0WkvIdsz9gK6ruF8_McDtow","y":"yYFWNSoTk9uy048qBpz73T5RNd2sotQp-HBNKZajGEY"}]}"#;
/// The README's test vector key.
const HMAC_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const PROVIDERS: [Provider; 4] = [
    Provider::Github,
    Provider::Gitlab,
    Provider::Azure,
    Provider::Generic,
];
/// Registered JWT claims: checked, never runner claims.
const REGISTERED: [&str; 6] = ["iss", "aud", "exp", "nbf", "iat", "jti"];
/// The runner-claim bounds, as the README states them.
const MAX_CLAIMS: usize = 64;
const MAX_NAME_BYTES: usize = 64;
const MAX_VALUE_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let provider = PROVIDERS[usize::from(input.byte()) % PROVIDERS.len()];
    let mut parts = input.0.splitn(4, |b| *b == 0xFF);
    let document = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let envelope = parts.next().unwrap_or_default();
    check_jwks(document);
    if let Ok(token) = std::str::from_utf8(token) {
        check_token(provider, document, token);
    }
    if let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(claims) {
        check_mapping(provider, &claims);
    }
    check_hmac(envelope);
});

fn check_jwks(document: &[u8]) {
    let Ok(keys) = jwks_keys(document) else {
        return;
    };
    assert!(!keys.is_empty(), "a JWKS with no usable key parsed");
    // Read as keyward reads it: fields other than `keys` are skipped
    // unchecked (a lone surrogate escape in one is no error).
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let Document { keys: entries } =
        serde_json::from_slice(document).expect("a parsed JWKS has a keys array");
    let absent_or = |entry: &Value, name: &str, wanted: &str| {
        entry.get(name).is_none_or(|v| v.is_null() || v == wanted)
    };
    for (kid, alg) in &keys {
        let usable = entries.iter().any(|e| {
            e["kid"] == *kid
                && absent_or(e, "use", "sig")
                && match alg.as_str() {
                    "RS256" => e["kty"] == "RSA" && absent_or(e, "alg", "RS256"),
                    "ES256" => {
                        e["kty"] == "EC" && e["crv"] == "P-256" && absent_or(e, "alg", "ES256")
                    }
                    _ => false,
                }
        });
        assert!(usable, "key {kid:?} taken as {alg} from {entries:?}");
    }
}

fn check_token(provider: Provider, document: &[u8], token: &str) {
    let identity = oidc_identity(provider, document)
        .or_else(|_| oidc_identity(provider, KEYS.as_bytes()))
        .expect("the built-in JWKS parses");
    let auth = Map::from_iter([
        ("algorithm".to_owned(), Value::from("OIDC-JWT")),
        ("token".to_owned(), Value::from(token)),
    ]);
    match block_on(identity.verify(&auth)) {
        Ok(verified) => panic!("a token nobody can sign was accepted: {verified:?}"),
        Err(failure) => {
            let signature = token.rsplit('.').next().unwrap_or_default();
            if looks_like_a_signature(signature) && !echoable(token).contains(signature) {
                assert!(
                    !failure.to_string().contains(signature),
                    "the refusal repeats the signature: {failure}"
                );
            }
        }
    }
    let Some(payload) = token.split('.').nth(1) else {
        return;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return;
    };
    if let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(&json) {
        check_mapping(provider, &claims);
    }
}

/// Base64url of at least an ES256 signature's length.
fn looks_like_a_signature(text: &str) -> bool {
    text.len() >= 86
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a refusal may quote of a token: its decoded header and payload
/// (the `kid`, the `alg`, a claim a parser names), raw and unescaped.
fn echoable(token: &str) -> String {
    let mut text = String::new();
    for part in token.split('.').take(2) {
        let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part) else {
            continue;
        };
        text.push_str(&String::from_utf8_lossy(&json));
        if let Ok(value) = serde_json::from_slice::<Value>(&json) {
            text.push_str(&format!("{value} {value:?}"));
        }
    }
    text
}

/// A claim as the mapping reads it: a string, or a number's digits.
fn text(token: &Map<String, Value>, name: &str) -> Option<String> {
    match token.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn check_mapping(provider: Provider, token: &Map<String, Value>) {
    let mapped = map_claims(provider, token);
    assert_eq!(mapped.get("provider"), Some(provider.claim()));
    for (name, value) in mapped.iter() {
        assert!(
            !REGISTERED.contains(&name),
            "registered claim {name} mapped"
        );
        assert!(
            value.len() <= MAX_VALUE_BYTES,
            "claim {name} is {} bytes",
            value.len()
        );
    }
    // The names the provider's mapping sets; every other string claim
    // within the bound comes through as it is.
    let own: &[&str] = match provider {
        Provider::Github => &["job", "runner_name"],
        Provider::Gitlab => &[
            "repository",
            "workflow",
            "run_id",
            "actor",
            "job",
            "runner_name",
            "ref",
        ],
        Provider::Azure => &["repository", "workflow"],
        Provider::Generic => &[],
    };
    for (name, value) in token {
        if REGISTERED.contains(&name.as_str()) || name == "provider" || own.contains(&name.as_str())
        {
            continue;
        }
        let kept = value.as_str().filter(|s| s.len() <= MAX_VALUE_BYTES);
        assert_eq!(mapped.get(name), kept, "claim {name}");
    }
    // A mapped value past the bound is no claim at all.
    let within = |v: String| (v.len() <= MAX_VALUE_BYTES).then_some(v);
    match provider {
        Provider::Github => {
            if let Some(job) = text(token, "job_workflow_ref") {
                assert_eq!(mapped.get("job"), within(job).as_deref());
            }
        }
        Provider::Gitlab => {
            if let Some(repository) = text(token, "project_path") {
                assert_eq!(mapped.get("repository"), within(repository).as_deref());
            }
            if let (Some("branch"), Some(name)) =
                (text(token, "ref_type").as_deref(), text(token, "ref"))
            {
                let full = within(format!("refs/heads/{name}"));
                assert_eq!(mapped.get("ref"), full.as_deref());
            }
        }
        Provider::Azure => {
            let sub = text(token, "sub").unwrap_or_default();
            if let Some(rest) = sub.strip_prefix("sc://")
                && let [org, project, connection] = rest.splitn(3, '/').collect::<Vec<_>>()[..]
            {
                let repository = within(format!("{org}/{project}"));
                assert_eq!(mapped.get("repository"), repository.as_deref());
                let workflow = within(connection.to_owned());
                assert_eq!(mapped.get("workflow"), workflow.as_deref());
            }
        }
        Provider::Generic => {}
    }
}

/// Whether claims have the shape HMAC mode accepts: an object of at most
/// 64 members, names of 1 to 64 bytes of `A-Z a-z 0-9 _ . -`, string
/// values of at most 1024 bytes.
fn well_shaped(claims: &Value) -> bool {
    claims.as_object().is_some_and(|map| {
        map.len() <= MAX_CLAIMS
            && map.iter().all(|(name, value)| {
                (1..=MAX_NAME_BYTES).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                    && value.as_str().is_some_and(|v| v.len() <= MAX_VALUE_BYTES)
            })
    })
}

fn check_hmac(envelope: &[u8]) {
    let Ok(Value::Object(auth)) = serde_json::from_slice::<Value>(envelope) else {
        return;
    };
    let identity = Identity::from_config(&AuthConfig::default(), Path::new("."), Some(HMAC_KEY))
        .expect("the HMAC key is valid");
    let key = HmacKey::new("default", HMAC_KEY).expect("the HMAC key is valid");
    let claims = auth.get("claims").map(RunnerClaims::from_json);
    if let Ok(Some(verified)) = block_on(identity.verify(&auth)) {
        let Some(Ok(claims)) = &claims else {
            panic!("claims that do not parse were accepted");
        };
        let signature = auth["signature"].as_str().unwrap_or_default();
        assert_eq!(signature.to_ascii_lowercase(), key.sign(claims));
        assert_eq!(auth["key_id"], "default");
        assert_eq!(&verified.claims, claims);
    }
    let Some(claims) = claims else {
        return;
    };
    assert_eq!(
        claims.is_ok(),
        well_shaped(&auth["claims"]),
        "claims {} judged {claims:?}",
        auth["claims"]
    );
    let Ok(claims) = claims else {
        return;
    };
    let sorted: BTreeMap<&str, &str> = claims.iter().collect();
    assert_eq!(
        claims.canonical_bytes(),
        serde_json::to_vec(&sorted).expect("strings serialize"),
        "canonical bytes"
    );
    let mut signed = auth.clone();
    signed.insert("algorithm".to_owned(), "HMAC-SHA256".into());
    signed.insert("key_id".to_owned(), "default".into());
    let signature = key.sign(&claims);
    signed.insert("signature".to_owned(), signature.clone().into());
    let verified = block_on(identity.verify(&signed))
        .expect("claims signed with the key pass")
        .expect("runner auth was sent");
    assert_eq!(verified.claims, claims);
    let last = if signature.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &signature[..signature.len() - 1]);
    signed.insert("signature".to_owned(), forged.into());
    let failure = block_on(identity.verify(&signed)).expect_err("one digit off passes");
    assert_eq!(failure.check, Check::Signature);
}
