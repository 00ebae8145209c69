//! What verified runner auth adds to a decision (criterion): the built-in
//! policy pack deciding a request alone, beside the same decision after
//! verifying an OIDC token (RS256 and ES256, keys from a JWKS already
//! cached) on a token's first use (signature checked) and on its next uses
//! (remembered: time claims and key checked again), and HMAC-signed claims.
//! Prints the added microseconds per decision.
//!
//! Run: `cargo bench -p keyward-identity --bench verify`.

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use keyward_api::EvaluateRequest;
use keyward_identity::{AuthConfig, HmacKey, Identity, OidcConfig, Provider, RunnerClaims};
use serde_json::{Map, Value, json};

const ISSUER: &str = "https://issuer.keyward.test";
/// More distinct tokens than are remembered, so cycling through them never
/// finds one already verified.
const FRESH_TOKENS: usize = 4200;

type Envelope = Map<String, Value>;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The signing input of a GitHub-like token numbered `n`.
fn signing_input(alg: &str, kid: &str, n: usize) -> String {
    let claims = json!({"iss": ISSUER, "aud": "keyward", "iat": now(), "exp": now() + 3600,
        "jti": n.to_string(), "repository": "acme/app", "workflow": "ci", "run_id": "1",
        "run_attempt": "1", "ref": "refs/heads/main", "sha": "abc", "actor": "octocat",
        "job_workflow_ref": "acme/app/.github/workflows/ci.yml@refs/heads/main"});
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn oidc(token: String) -> Envelope {
    let mut auth = Map::new();
    auth.insert("algorithm".into(), "OIDC-JWT".into());
    auth.insert("token".into(), token.into());
    auth
}

/// Two issuer keys (RSA, P-256), their JWKS, and [`FRESH_TOKENS`] distinct
/// tokens from each.
fn keys_and_tokens() -> (Value, Vec<Envelope>, Vec<Envelope>) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = ec.public_key().as_ref().to_vec();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(&parts.n), "e": b64(&parts.e)},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])},
    ]});
    let rs256 = (0..FRESH_TOKENS)
        .map(|n| {
            let input = signing_input("RS256", "rsa", n);
            let mut sig = vec![0; rsa.public_modulus_len()];
            let alg = &aws_lc_rs::signature::RSA_PKCS1_SHA256;
            rsa.sign(alg, &rng, input.as_bytes(), &mut sig).unwrap();
            oidc(format!("{input}.{}", b64(&sig)))
        })
        .collect();
    let es256 = (0..FRESH_TOKENS)
        .map(|n| {
            let input = signing_input("ES256", "ec", n);
            let sig = ec.sign(&rng, input.as_bytes()).unwrap();
            oidc(format!("{input}.{}", b64(sig.as_ref())))
        })
        .collect();
    (jwks, rs256, es256)
}

fn hmac_envelope(key: &str) -> Envelope {
    let claims = json!({"provider": "github-actions", "repository": "acme/app",
        "ref": "refs/heads/main", "sha": "abc", "run_id": "1", "actor": "octocat"});
    let signature = HmacKey::new("default", key)
        .unwrap()
        .sign(&RunnerClaims::from_json(&claims).unwrap());
    json!({"algorithm": "HMAC-SHA256", "key_id": "default", "claims": claims,
           "signature": signature})
    .as_object()
    .unwrap()
    .clone()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (jwks, rs256, es256) = keys_and_tokens();
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let key = "4f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170615243a";
    let config = AuthConfig {
        require_runner_auth: true,
        runner_hmac_key_file: None,
        runner_key_id: None,
        oidc: Some(OidcConfig {
            provider: Provider::Github,
            issuer: ISSUER.into(),
            audience: "keyward".into(),
            jwks_url: None,
            jwks_file: Some("jwks.json".into()),
            jwks_ca_file: None,
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway: "60s".into(),
            jwks_min_refetch: "60s".into(),
            jwks_cache_ttl: "1h".into(),
            jwks_max_bytes: 65536,
            require: [("repository".to_owned(), "acme/*".to_owned())].into(),
        }),
    };
    let identity = Identity::from_config(&config, dir.path(), Some(key)).unwrap();
    let cases: [(&str, Vec<Envelope>); 5] = [
        ("oidc_rs256_first_use", rs256.clone()),
        ("oidc_rs256_repeat", rs256[..1].to_vec()),
        ("oidc_es256_first_use", es256.clone()),
        ("oidc_es256_repeat", es256[..1].to_vec()),
        ("hmac_sha256", vec![hmac_envelope(key)]),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let policy = keyward_policy::baseline();
    let base = EvaluateRequest {
        action_type: "git".into(),
        target: Some("main".into()),
        requested_operation: Some("push".into()),
        ..Default::default()
    };
    // Each call takes the next envelope of its pool (the only one for a
    // repeated token).
    let next = Cell::new(0usize);
    let decide = |pool: Option<&[Envelope]>| {
        let mut req = base.clone();
        if let Some(pool) = pool {
            let auth = &pool[next.get() % pool.len()];
            next.set(next.get() + 1);
            let verified = runtime.block_on(identity.verify(auth)).unwrap().unwrap();
            req.verified_runner = Some(verified.claims.to_json());
        }
        black_box(policy.evaluate(&req).decision())
    };

    let mut group = c.benchmark_group("decision");
    group.bench_function("without_runner_auth", |b| b.iter(|| decide(None)));
    for (name, pool) in &cases {
        group.bench_function(*name, |b| b.iter(|| decide(Some(pool))));
    }
    group.finish();

    // The added time, measured the same way for each, so the figure needs
    // no reading of criterion's report.
    let per_call = |pool: Option<&[Envelope]>| {
        let n = 3000;
        for _ in 0..200 {
            decide(pool);
        }
        let start = Instant::now();
        for _ in 0..n {
            decide(pool);
        }
        start.elapsed() / n
    };
    let without = per_call(None);
    println!(
        "\nper decision without runner auth: {:.1} µs",
        micros(without)
    );
    for (name, pool) in &cases {
        let with = per_call(Some(pool));
        println!(
            "{name}: {:.1} µs per decision, {:.1} µs added by verification (target <= 50 µs)",
            micros(with),
            micros(with.saturating_sub(without))
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
