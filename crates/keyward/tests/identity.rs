//! Verified CI runner identity, against a real daemon: HMAC-signed runner
//! claims, OIDC tokens checked against a JWKS served over real TLS by a
//! local issuer (keys generated here, rotated, the server stopped), policy
//! matching on verified claims only, runs bound to an identity, and the CI
//! wrapper script driven through each provider's token endpoint.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use common::{TestHome, json};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyward_testkit::{Answer, Origin, Received};
use serde_json::{Value, json};

const RUNNER_KEY: &str = "4f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170615243a";
const ISSUER: &str = "https://issuer.keyward.test";
const AUDIENCE: &str = "keyward";

/// A policy that trusts `runner.*`: deploys only from acme/prod's CI.
const POLICY: &str = r#"
[policy]
id = "ci"
default = "block"
default_rule_id = "ci.deploy_needs_identity"
default_reason = "deploys come from acme/prod's CI only"
[[rules]]
id = "ci.prod_only_from_acme"
action = "deploy"
when = { "runner.repository" = "acme/prod" }
decision = "allow"
"#;

/// A signing key of the test issuer.
struct TestKey {
    kid: String,
    pair: Pair,
    /// The public key's bytes (what an HS256 confusion attack signs with).
    public: Vec<u8>,
    /// The public key as a JWK.
    jwk: Value,
}

enum Pair {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        Self {
            kid: kid.to_owned(),
            public: pair.public_key().as_ref().to_vec(),
            jwk: json!({"kty": "RSA", "alg": "RS256", "n": b64(&parts.n), "e": b64(&parts.e)}),
            pair: Pair::Rsa(pair),
        }
    }

    fn ec(kid: &str) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // An uncompressed point: 0x04, x, y.
        let point = pair.public_key().as_ref().to_vec();
        Self {
            kid: kid.to_owned(),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            public: point,
            pair: Pair::Ec(pair),
        }
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = self.kid.clone().into();
        jwk["use"] = "sig".into();
        jwk
    }

    /// A JWS with this header, signed by this key (whatever the header
    /// says).
    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            Pair::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// GitHub Actions token claims for `repository`, valid now.
fn github_claims(repository: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now() - 5, "nbf": now() - 5, "exp": now() + 300,
        "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "repository": repository, "workflow": "deploy", "run_id": "4242", "run_attempt": "1",
        "ref": "refs/heads/main", "sha": "0123abcd", "actor": "octocat",
        "job_workflow_ref": format!("{repository}/.github/workflows/deploy.yml@refs/heads/main"),
    })
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// A local OIDC issuer over TLS (the test kit's origin): serves every
/// file of its directory by name (`/jwks.json`), GitHub's token request
/// (`GET /github/token`, `Authorization: bearer <request-token>`, answers
/// `{"value"}`) and Azure's (`POST /azure/oidctoken`, `Authorization:
/// Bearer <request-token>`, answers `{"oidcToken"}`), reading the files
/// at each request.
struct Issuer {
    dir: PathBuf,
    origin: Option<Origin>,
    port: u16,
    ca: PathBuf,
}

impl Issuer {
    fn start(dir: &Path, jwks_doc: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("jwks.json"), jwks_doc).unwrap();
        let root = dir.to_owned();
        let read = move |name: &str| {
            std::fs::read_to_string(root.join(name))
                .map(|t| t.trim().to_owned())
                .unwrap_or_default()
        };
        let tokens = read.clone();
        let token = move |req: &Received, field: &str, file: &str| {
            if req.bearer() != Some(tokens("request-token").as_str()) {
                return Answer::json(&json!({"message": "bad request token"})).with_status(401);
            }
            Answer::json(&json!({ field: tokens(file) }))
        };
        let azure = token.clone();
        let files = dir.to_owned();
        let origin = Origin::builder()
            .route("/github/token", move |req| {
                token(req, "value", "token-github")
            })
            .route("/azure/oidctoken", move |req| {
                azure(req, "oidcToken", "token-azure")
            })
            .fallback(move |req| {
                let path = req.path.split('?').next().unwrap_or_default();
                let name = path.trim_start_matches('/');
                match std::fs::read(files.join(name)) {
                    Ok(bytes) if !name.contains('/') => {
                        Answer::bytes(bytes).header("content-type", "application/json")
                    }
                    _ => Answer::json(&json!({})).with_status(404),
                }
            })
            .start_background();
        Self {
            dir: dir.to_owned(),
            port: origin.port(),
            ca: origin.write_ca(dir),
            origin: Some(origin),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// `METHOD path` of each request it received, a line each.
    fn log(&self) -> String {
        self.origin
            .iter()
            .flat_map(Origin::received)
            .map(|r| format!("{} {}\n", r.method, r.path))
            .collect()
    }

    fn requests(&self, line: &str) -> usize {
        self.log().lines().filter(|l| l.starts_with(line)).count()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    /// Stops serving: its port refuses connections from now on.
    fn stop(&mut self) {
        self.origin = None;
    }
}

/// A home with `config` (and the CI policy) written, daemon not started.
fn home_with(config: &str) -> TestHome {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("ci-policy.toml"), POLICY).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        format!("[policy]\nfiles = [\"ci-policy.toml\"]\n{config}"),
    )
    .unwrap();
    home
}

fn oidc_config(issuer: &Issuer, extra: &str) -> String {
    format!(
        "[auth]\nrequire_runner_auth = true\n[auth.oidc]\nprovider = \"github\"\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\njwks_url = \"{}\"\njwks_ca_file = \"{}\"\n{extra}",
        issuer.url("/jwks.json"),
        issuer.ca.display()
    )
}

/// `keyward eval --action deploy --json` with runner auth from a file
/// holding `auth` (none when `None`): (exit code, decision JSON or stderr).
fn eval_with(home: &TestHome, auth: Option<&Value>) -> (i32, Value) {
    let file = home.path.parent().unwrap().join("runner-auth.json");
    let mut args = vec!["eval", "--action", "deploy", "--target", "prod", "--json"];
    if let Some(auth) = auth {
        std::fs::write(&file, auth.to_string()).unwrap();
        args.extend(["--runner-auth-file", file.to_str().unwrap()]);
    }
    let run = home.run(&args);
    let out = if run.code == 1 {
        json!({"stderr": run.stderr})
    } else {
        json(&run.stdout)
    };
    (run.code, out)
}

fn oidc(token: &str) -> Value {
    json!({"algorithm": "OIDC-JWT", "token": token})
}

/// Asserts a block by `runner_auth.invalid` naming `check`.
#[track_caller]
fn assert_refused(result: (i32, Value), check: &str) {
    let (code, decision) = result;
    assert_eq!(code, 2, "{decision}");
    assert_eq!(decision["rule_id"], "runner_auth.invalid", "{decision}");
    assert_eq!(decision["severity"], "critical", "{decision}");
    let reason = decision["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("failed the {check} check")),
        "expected the {check} check: {reason}"
    );
}

/// Asserts the CI policy allowed it because the verified repository is
/// acme/prod.
#[track_caller]
fn assert_verified_allow(result: (i32, Value)) {
    let (code, decision) = result;
    assert_eq!(code, 0, "{decision}");
    assert_eq!(decision["rule_id"], "ci.prod_only_from_acme", "{decision}");
}

/// HMAC envelope over `claims`, signed with `key` (hex).
fn hmac_auth(claims: &Value, key: &str, key_id: &str) -> Value {
    let signer = keyward_identity::HmacKey::new(key_id, key).unwrap();
    let parsed = keyward_identity::RunnerClaims::from_json(claims).unwrap();
    json!({"claims": claims, "algorithm": "HMAC-SHA256", "key_id": key_id,
           "signature": signer.sign(&parsed)})
}

fn acme_claims() -> Value {
    json!({"provider": "github-actions", "repository": "acme/prod", "workflow": "deploy",
           "run_id": "7", "run_attempt": "1", "ref": "refs/heads/main", "sha": "abc123",
           "actor": "octocat", "job": "deploy", "runner_name": "runner-1"})
}

/// Every file of the home (evidence, daemon.log, runs.json, ...) that
/// holds `needle`.
#[track_caller]
fn assert_nowhere(home: &TestHome, needle: &str) {
    let found = home.files_containing(needle);
    assert!(found.is_empty(), "{needle:?} found in {found:?}");
}

#[test]
fn hmac_runner_claims_good_wrong_key_wrong_key_id_tampered_and_missing() {
    let home = home_with(
        "[auth]\nrequire_runner_auth = true\nrunner_hmac_key_file = \"runner.key\"\nrunner_key_id = \"ci-2026\"\n",
    );
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    home.start(&[]);

    let good = hmac_auth(&acme_claims(), RUNNER_KEY, "ci-2026");
    assert_verified_allow(eval_with(&home, Some(&good)));

    let wrong_key = hmac_auth(&acme_claims(), &"ab".repeat(32), "ci-2026");
    assert_refused(eval_with(&home, Some(&wrong_key)), "signature");

    let wrong_id = hmac_auth(&acme_claims(), RUNNER_KEY, "ci-2025");
    assert_refused(eval_with(&home, Some(&wrong_id)), "key id");

    // A signed identity for another repository, edited to claim acme/prod.
    let mut tampered = hmac_auth(
        &json!({"repository": "evil/fork", "ref": "refs/heads/main"}),
        RUNNER_KEY,
        "ci-2026",
    );
    tampered["claims"]["repository"] = "acme/prod".into();
    assert_refused(eval_with(&home, Some(&tampered)), "signature");
    // An extra claim slipped in after signing.
    let mut extra = good.clone();
    extra["claims"]["environment"] = "production".into();
    assert_refused(eval_with(&home, Some(&extra)), "signature");

    assert_refused(eval_with(&home, None), "missing");
    // Claims without a signature envelope at all (the old free map).
    assert_refused(
        eval_with(&home, Some(&json!({"repository": "acme/prod"}))),
        "algorithm",
    );

    // The decision record keeps the verified claims and how they were
    // verified, never the signature.
    let tail = home.run(&["audit", "tail", "-n", "20", "--json"]);
    let verified: Vec<Value> = tail
        .stdout
        .lines()
        .map(json)
        .filter(|r| r["data"]["runner"].is_object())
        .collect();
    assert_eq!(verified.len(), 1, "{}", tail.stdout);
    let record = &verified[0]["data"];
    assert_eq!(record["runner"]["repository"], "acme/prod");
    assert_eq!(record["runner"]["runner_name"], "runner-1");
    assert_eq!(
        record["runner_auth"],
        json!({"algorithm": "HMAC-SHA256", "key_id": "ci-2026"})
    );
    assert!(record["request"].get("runner_auth").is_none(), "{record}");
    assert!(
        tail.stdout.contains("\"check\":\"signature\""),
        "failures recorded"
    );
    assert_nowhere(&home, good["signature"].as_str().unwrap());
}

#[test]
fn hmac_key_from_the_daemons_environment() {
    let home = home_with("[auth]\nrequire_runner_auth = true\n");
    let run = home
        .cmd(&["daemon", "start", "--detach", "--json"])
        .env("KEYWARD_RUNNER_AUTH_HMAC_KEY", RUNNER_KEY)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let good = hmac_auth(&acme_claims(), RUNNER_KEY, "default");
    assert_verified_allow(eval_with(&home, Some(&good)));
    assert_refused(
        eval_with(&home, Some(&hmac_auth(&acme_claims(), RUNNER_KEY, "other"))),
        "key id",
    );
}

#[test]
fn policy_matches_verified_claims_only() {
    // Runner auth not required: an unverified identity is simply not one.
    let home = home_with("[auth]\nrunner_hmac_key_file = \"runner.key\"\n");
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    home.start(&[]);
    let blocked_by_policy = |result: (i32, Value)| {
        assert_eq!(result.0, 2, "{}", result.1);
        assert_eq!(
            result.1["rule_id"], "ci.deploy_needs_identity",
            "{}",
            result.1
        );
    };
    // Invented claims, in every place a caller might put them.
    blocked_by_policy(eval_with(&home, Some(&json!({"repository": "acme/prod"}))));
    blocked_by_policy(eval_with(
        &home,
        Some(&json!({"algorithm": "HMAC-SHA256", "key_id": "default",
                     "claims": {"repository": "acme/prod"}, "signature": "00".repeat(32)})),
    ));
    let input = home.path.parent().unwrap().join("req.json");
    std::fs::write(
        &input,
        json!({"action_type": "deploy",
               "context": {"runner": {"repository": "acme/prod"}}})
        .to_string(),
    )
    .unwrap();
    let run = home.run(&["eval", "--input", input.to_str().unwrap(), "--json"]);
    blocked_by_policy((run.code, json(&run.stdout)));
    // Claims as fields of their own are not even read: the request is
    // refused (exit 1), never decided.
    for field in ["verified_runner", "runner"] {
        let mut req = json!({"action_type": "deploy"});
        req[field] = json!({"repository": "acme/prod"});
        std::fs::write(&input, req.to_string()).unwrap();
        let run = home.run(&["eval", "--input", input.to_str().unwrap(), "--json"]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains(&format!("unknown field {field:?}")),
            "{run:?}"
        );
        let (status, body) = home.http("POST", "/v1/evaluate", Some(&req.to_string()));
        assert_eq!(
            (status, json(&body)["error"]["code"].as_str()),
            (400, Some("unknown_field")),
            "{body}"
        );
    }
    // The same claims, signed: now they count.
    assert_verified_allow(eval_with(
        &home,
        Some(&hmac_auth(&acme_claims(), RUNNER_KEY, "default")),
    ));
    // A verified identity for another repository does not match.
    blocked_by_policy(eval_with(
        &home,
        Some(&hmac_auth(
            &json!({"repository": "acme/prod-fork"}),
            RUNNER_KEY,
            "default",
        )),
    ));
}

#[test]
fn oidc_rs256_and_es256_tokens_and_every_failed_check() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&rsa, &ec]));
    let home = home_with(&oidc_config(&issuer, ""));
    home.start(&[]);

    let good = rsa.sign(&github_claims("acme/prod"));
    assert_verified_allow(eval_with(&home, Some(&oidc(&good))));
    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&ec.sign(&github_claims("acme/prod")))),
    ));
    // From a token file, as CI passes it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{good}\n")).unwrap();
    let run = home.run(&[
        "eval",
        "--action",
        "deploy",
        "--oidc-token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = github_claims("acme/prod");
        edit(&mut claims);
        rsa.sign(&claims)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "issuer",
            with(&|c| c["iss"] = "https://token.actions.githubusercontent.com".into()),
        ),
        ("audience", with(&|c| c["aud"] = "someone-else".into())),
        ("expired", with(&|c| c["exp"] = (now() - 120).into())),
        ("not yet valid", with(&|c| c["nbf"] = (now() + 120).into())),
        ("not yet valid", with(&|c| c["iat"] = (now() + 120).into())),
    ];
    for (check, token) in &cases {
        assert_refused(eval_with(&home, Some(&oidc(token))), check);
    }
    // Within the 60 s leeway, clocks that differ a little are tolerated.
    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&with(&|c| c["exp"] = (now() - 20).into()))),
    ));
    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&with(&|c| c["nbf"] = (now() + 20).into()))),
    ));

    // A valid token with its payload swapped for another repository's.
    let evil = rsa.sign(&github_claims("evil/fork"));
    let good_parts: Vec<&str> = good.split('.').collect();
    let evil_parts: Vec<&str> = evil.split('.').collect();
    let spliced = format!("{}.{}.{}", good_parts[0], evil_parts[1], good_parts[2]);
    let spliced_back = format!("{}.{}.{}", evil_parts[0], good_parts[1], evil_parts[2]);
    assert_refused(eval_with(&home, Some(&oidc(&spliced))), "signature");
    assert_refused(eval_with(&home, Some(&oidc(&spliced_back))), "signature");

    // alg none: an unsigned token.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})
            .to_string()
            .as_bytes()),
        b64(github_claims("acme/prod").to_string().as_bytes())
    );
    assert_refused(eval_with(&home, Some(&oidc(&none))), "algorithm");
    // HS256 with the issuer's public key as the HMAC secret.
    for public in [&rsa.public, &ec.public] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let confused = jsonwebtoken::encode(
            &header,
            &github_claims("acme/prod"),
            &EncodingKey::from_secret(public),
        )
        .unwrap();
        assert_refused(eval_with(&home, Some(&oidc(&confused))), "algorithm");
    }
    // An RS256 header naming the EC key.
    let mismatched = rsa.sign_with(
        &json!({"alg": "RS256", "kid": "ec-1"}),
        &github_claims("acme/prod"),
    );
    assert_refused(eval_with(&home, Some(&oidc(&mismatched))), "algorithm");
    // No kid.
    let no_kid = rsa.sign_with(&json!({"alg": "RS256"}), &github_claims("acme/prod"));
    assert_refused(eval_with(&home, Some(&oidc(&no_kid))), "key id");
    assert_refused(eval_with(&home, Some(&oidc("not-a-jwt"))), "malformed");

    // The token is never recorded, nor logged.
    home.run(&["daemon", "stop"]);
    for token in [&good, &cases[0].1] {
        assert_nowhere(&home, token);
        assert_nowhere(&home, token.rsplit('.').next().unwrap());
    }
    assert!(
        home.log()
            .contains("runner auth refused: runner auth failed the issuer check"),
        "{}",
        home.log()
    );
}

#[test]
fn oidc_required_claims_and_provider_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa("rsa-1");
    let issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&rsa]));
    let home = home_with(&oidc_config(
        &issuer,
        "require = { repository = \"acme/*\", ref = \"refs/heads/main\" }\n",
    ));
    home.start(&[]);
    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&rsa.sign(&github_claims("acme/prod")))),
    ));
    let (code, decision) = eval_with(&home, Some(&oidc(&rsa.sign(&github_claims("evil/prod")))));
    assert_refused((code, decision.clone()), "claim mismatch");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("\"evil/prod\""),
        "{decision}"
    );
    let tail = home.run(&["audit", "tail", "-n", "5", "--json"]);
    let record = tail
        .stdout
        .lines()
        .map(json)
        .find(|r| r["data"]["runner"].is_object())
        .expect("a verified decision");
    let runner = &record["data"]["runner"];
    assert_eq!(runner["provider"], "github-actions");
    assert_eq!(
        runner["job"],
        "acme/prod/.github/workflows/deploy.yml@refs/heads/main"
    );
    assert_eq!(runner["run_id"], "4242");
    assert_eq!(record["data"]["runner_auth"]["issuer"], ISSUER);
    assert_eq!(record["data"]["runner_auth"]["key_id"], "rsa-1");
}

#[test]
fn unknown_kid_refetches_at_most_once_per_interval_and_rotation_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = (TestKey::ec("k1"), TestKey::rsa("k2"), TestKey::ec("k3"));
    let issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&old]));
    let home = home_with(&oidc_config(&issuer, "jwks_min_refetch = \"1s\"\n"));
    home.start(&[]);

    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&old.sign(&github_claims("acme/prod")))),
    ));
    assert_eq!(issuer.requests("GET /jwks.json"), 1);
    // Unknown kids right after a fetch: no new fetch, however many.
    for _ in 0..3 {
        assert_refused(
            eval_with(
                &home,
                Some(&oidc(&stranger.sign(&github_claims("acme/prod")))),
            ),
            "unknown kid",
        );
    }
    assert_eq!(issuer.requests("GET /jwks.json"), 1, "refetch not bounded");

    // The issuer rotates to k2 (k1 retired).
    issuer.write("jwks.json", &jwks(&[&new]));
    std::thread::sleep(Duration::from_millis(1100));
    assert_verified_allow(eval_with(
        &home,
        Some(&oidc(&new.sign(&github_claims("acme/prod")))),
    ));
    assert_eq!(issuer.requests("GET /jwks.json"), 2);
    // The retired key is gone with the refetched set.
    assert_refused(
        eval_with(&home, Some(&oidc(&old.sign(&github_claims("acme/prod"))))),
        "unknown kid",
    );
}

#[test]
fn jwks_server_down_keeps_cached_keys_and_with_none_cached_blocks_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::rsa("rsa-1");
    let mut issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&key]));
    // Keys go stale at once, so every use tries a refetch (bounded).
    let home = home_with(&oidc_config(
        &issuer,
        "jwks_cache_ttl = \"0s\"\njwks_min_refetch = \"0s\"\n",
    ));
    home.start(&[]);
    let token = key.sign(&github_claims("acme/prod"));
    assert_verified_allow(eval_with(&home, Some(&oidc(&token))));
    issuer.stop();
    assert_verified_allow(eval_with(&home, Some(&oidc(&token))));
    assert!(
        home.log()
            .contains("JWKS fetch failed (cached keys, if any, stay in use)"),
        "{}",
        home.log()
    );

    // A daemon that never had keys: a clear block, not an allow.
    let fresh = home_with(&oidc_config(&issuer, ""));
    fresh.start(&[]);
    let (code, decision) = eval_with(&fresh, Some(&oidc(&token)));
    assert_refused((code, decision.clone()), "jwks unavailable");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("no signing keys are cached and the JWKS could not be fetched"),
        "{decision}"
    );
}

#[test]
fn oversized_jwks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::rsa("rsa-1");
    let mut doc = json!({"keys": [key.jwk()]});
    doc["padding"] = "x".repeat(4096).into();
    let issuer = Issuer::start(&dir.path().join("issuer"), &doc.to_string());
    let home = home_with(&oidc_config(&issuer, "jwks_max_bytes = 2048\n"));
    home.start(&[]);
    let (code, decision) = eval_with(&home, Some(&oidc(&key.sign(&github_claims("acme/prod")))));
    assert_refused((code, decision.clone()), "jwks unavailable");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("larger than jwks_max_bytes (2048)"),
        "{decision}"
    );
}

#[test]
fn bad_auth_config_names_the_key_and_exits_64() {
    let cases: &[(&str, &str)] = &[
        (
            "[auth]\nrequire_runner_auth = true\n",
            "auth.require_runner_auth",
        ),
        (
            "[auth]\nrunner_hmac_key_file = \"short.key\"\n",
            "at least 32 bytes",
        ),
        ("[auth]\nrunner_key_id = \"x\"\n", "auth.runner_key_id"),
        (
            "[auth.oidc]\nprovider = \"github\"\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"http://localhost/jwks\"\n",
            "must be an https:// URL",
        ),
        (
            "[auth.oidc]\nprovider = \"github\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j.json\"\nalgorithms = [\"HS256\"]\n",
            "auth.oidc.algorithms",
        ),
        (
            "[auth.oidc]\nprovider = \"gitea\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j.json\"\n",
            "auth.oidc.provider",
        ),
        (
            "[auth.oidc]\nprovider = \"github\"\nissuer = \"i\"\naudience = \"a\"\n",
            "set exactly one of jwks_url (https) and jwks_file",
        ),
        (
            "[auth.oidc]\nprovider = \"github\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j.json\"\nleeway = \"soon\"\n",
            "auth.oidc.leeway",
        ),
        (
            "[grants.deploy]\nsecret = \"vault:deploy\"\nhosts = [\"example.com\"]\ninject = { header = \"x\" }\nrequire_runner = { repository = \"\" }\n",
            "grants.deploy.require_runner.repository",
        ),
    ];
    for (config, expected) in cases {
        let home = home_with(config);
        std::fs::write(home.file("short.key"), "too short").unwrap();
        std::fs::write(home.file("j.json"), jwks(&[&TestKey::ec("k")])).unwrap();
        let run = home.run(&["config", "check"]);
        assert_eq!(run.code, 64, "{config}: {run:?}");
        assert!(run.stderr.contains(expected), "{config}: {}", run.stderr);
        assert!(run.stderr.contains("keyward.toml"), "{}", run.stderr);
    }
    // --require-runner-auth without a way to verify: refused before start.
    let home = home_with("");
    let run = home.run(&["daemon", "start", "--detach", "--require-runner-auth"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stderr.contains("--require-runner-auth needs"),
        "{run:?}"
    );
    // Both a key file and the environment variable: which one is meant?
    let home = home_with("[auth]\nrunner_hmac_key_file = \"runner.key\"\n");
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    let run = home
        .cmd(&["config", "check"])
        .env("KEYWARD_RUNNER_AUTH_HMAC_KEY", RUNNER_KEY)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&run.stderr).contains("not both"));
}

#[test]
fn require_runner_auth_flag_blocks_without_auth() {
    let home = home_with("[auth]\nrunner_hmac_key_file = \"runner.key\"\n");
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    home.start(&["--require-runner-auth"]);
    // Clients can tell a daemon that verifies runner auth from an older one.
    let (_, health) = home.http("GET", "/v1/health", None);
    assert!(
        json(&health)["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "runner_auth")
    );
    assert_refused(eval_with(&home, None), "missing");
    assert_verified_allow(eval_with(
        &home,
        Some(&hmac_auth(&acme_claims(), RUNNER_KEY, "default")),
    ));
    // Survives a reload of a config that does not require it.
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    assert_refused(eval_with(&home, None), "missing");
    // A run without runner auth is refused too.
    let run = home.run(&["run", "--", "true"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("the run is refused: runner auth failed the missing check"),
        "{run:?}"
    );
}

#[test]
fn runs_are_bound_to_a_verified_identity_and_grants_can_require_one() {
    let home = home_with(
        "[auth]\nrunner_hmac_key_file = \"runner.key\"\n\
         [grants.deploy]\nsecret = \"vault:deploy\"\nhosts = [\"deploy.example.com\"]\n\
         inject = { header = \"authorization\" }\n\
         require_runner = { repository = \"acme/*\", ref = \"refs/heads/main\" }\n",
    );
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    assert_eq!(
        home.run_stdin(&["secret", "set", "deploy"], "deploy-secret-value")
            .code,
        0
    );
    let auth_file = home.path.parent().unwrap().join("auth.json");
    let write_auth = |claims: Value| {
        std::fs::write(
            &auth_file,
            hmac_auth(&claims, RUNNER_KEY, "default").to_string(),
        )
        .unwrap();
    };

    // No identity: the grant is refused, saying why and what to send.
    let run = home.run(&["run", "--grant", "deploy", "--", "true"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("grant deploy requires a verified runner")
            && run.stderr.contains("--runner-auth-file"),
        "{run:?}"
    );
    // A verified identity on another branch.
    write_auth(json!({"repository": "acme/prod", "ref": "refs/heads/feature"}));
    let run = home.run(&[
        "run",
        "--runner-auth-file",
        auth_file.to_str().unwrap(),
        "--grant",
        "deploy",
        "--",
        "true",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("its verified ref is \"refs/heads/feature\""),
        "{run:?}"
    );
    // Forged auth: the run is refused outright.
    let mut forged = hmac_auth(&acme_claims(), RUNNER_KEY, "default");
    forged["claims"]["repository"] = "acme/other".into();
    std::fs::write(&auth_file, forged.to_string()).unwrap();
    let run = home.run(&[
        "run",
        "--runner-auth-file",
        auth_file.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("failed the signature check"), "{run:?}");

    // The right identity: the run gets the grant, and its processes
    // evaluate as that identity without sending auth themselves.
    write_auth(acme_claims());
    let inner = format!("{} eval --action deploy --target prod --json", common::BIN);
    let run = home.run(&[
        "run",
        "--runner-auth-file",
        auth_file.to_str().unwrap(),
        "--grant",
        "deploy",
        "--",
        "sh",
        "-c",
        &inner,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        json(&run.stdout)["rule_id"],
        "ci.prod_only_from_acme",
        "{run:?}"
    );
    let tail = home.run(&["audit", "tail", "-n", "20", "--json", "--kind", "run"]);
    let created = tail
        .stdout
        .lines()
        .map(json)
        .find(|r| r["data"]["event"] == "run_created")
        .expect("run_created");
    assert_eq!(created["data"]["run"]["runner"]["repository"], "acme/prod");
    // Outside any run, the same evaluation has no identity.
    let (code, decision) = eval_with(&home, None);
    assert_eq!(
        (code, decision["rule_id"].as_str()),
        (2, Some("ci.deploy_needs_identity"))
    );
}

/// The CI wrapper, as each provider's runner would call it, against the
/// real daemon and the local issuer standing in for the provider.
#[test]
fn ci_wrapper_acquires_tokens_signs_claims_and_gates_on_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::rsa("rsa-1");
    let issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&key]));
    issuer.write("request-token", "runner-request-token-123");
    issuer.write("token-github", &key.sign(&github_claims("acme/prod")));
    issuer.write(
        "token-azure",
        &key.sign(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now() - 5, "exp": now() + 300,
        "sub": "sc://acme/prod/deploy-connection"})),
    );
    let gitlab_token = key.sign(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now() - 5, "exp": now() + 300,
        "project_path": "acme/prod", "pipeline_id": "99", "ref": "main", "ref_type": "branch",
        "sha": "abc", "user_login": "dev", "job_id": "5"}));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/keyward-ci.sh");

    let calls = std::cell::Cell::new(0);
    let wrapper = |provider: &str, config: String, env: &[(&str, &str)], args: &[&str]| {
        let home = home_with(&config);
        calls.set(calls.get() + 1);
        let out = dir.path().join(format!("out-{}", calls.get()));
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&script)
            .args(args)
            .env("KEYWARD_BIN", common::BIN)
            .env("KEYWARD_HOME", &home.path)
            .env("KEYWARD_CONFIG", home.file("keyward.toml"))
            .env("KEYWARD_OUT_DIR", &out)
            .env("KEYWARD_CI_PROVIDER", provider)
            .env("CURL_CA_BUNDLE", &issuer.ca)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let run = common::Run::from(cmd.output().unwrap());
        (home, out, run)
    };
    let github_env = [
        ("KEYWARD_OIDC_AUTO", "true"),
        ("KEYWARD_OIDC_AUDIENCE", AUDIENCE),
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            &*format!("{}?api-version=2.0", issuer.url("/github/token")),
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-request-token-123"),
    ];
    let github_env: Vec<(&str, &str)> = github_env.iter().map(|(k, v)| (*k, *v)).collect();
    let oidc_cfg = |provider: &str| {
        oidc_config(&issuer, "").replace(
            "provider = \"github\"",
            &format!("provider = \"{provider}\""),
        )
    };

    // GitHub Actions: allowed, the report and signed head written.
    let (home, out, run) = wrapper("github", oidc_cfg("github"), &github_env, DEPLOY);
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    let decision = json(&std::fs::read_to_string(out.join("decision.json")).unwrap());
    assert_eq!(decision["rule_id"], "ci.prod_only_from_acme");
    let verify = json(&std::fs::read_to_string(out.join("audit-verify.json")).unwrap());
    assert_eq!(verify["valid"], true, "{verify}");
    assert!(out.join("audit-head.json").is_file());
    assert!(
        issuer
            .log()
            .contains("GET /github/token?api-version=2.0&audience=keyward"),
        "the audience is asked for"
    );
    for token_part in [
        issuer_file(&issuer, "token-github"),
        "runner-request-token-123".into(),
    ] {
        assert!(!run.stdout.contains(&token_part) && !run.stderr.contains(&token_part));
        assert_nowhere(&home, &token_part);
    }
    // The gate: a blocked decision fails the step with eval's exit code,
    // and still leaves the evidence.
    let strict = oidc_config(&issuer, "require = { repository = \"other/*\" }\n");
    let (_home, out, run) = wrapper("github", strict, &github_env, DEPLOY);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stdout.contains("block (rule runner_auth.invalid)"),
        "{run:?}"
    );
    assert!(out.join("audit-verify.json").is_file());
    let mut bad_env = github_env.clone();
    bad_env[3] = ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong");
    let (_home, _, run) = wrapper("github", oidc_cfg("github"), &bad_env, DEPLOY);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("could not get the OIDC token"),
        "{run:?}"
    );

    // GitLab CI: the token comes from an id_tokens variable.
    let (home, _, run) = wrapper(
        "gitlab",
        oidc_cfg("gitlab"),
        &[
            ("KEYWARD_OIDC_AUTO", "true"),
            ("KEYWARD_ID_TOKEN", &gitlab_token),
        ],
        DEPLOY,
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    // Azure Pipelines: the OIDC request endpoint with System.AccessToken.
    let azure_url = format!("{}?api-version=7.1", issuer.url("/azure/oidctoken"));
    let (home, _, run) = wrapper(
        "azure",
        oidc_cfg("azure"),
        &[
            ("KEYWARD_OIDC_AUTO", "true"),
            ("SYSTEM_OIDCREQUESTURI", &azure_url),
            ("SYSTEM_ACCESSTOKEN", "runner-request-token-123"),
            ("KEYWARD_AZURE_SERVICE_CONNECTION_ID", "conn-1"),
        ],
        DEPLOY,
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    assert!(
        issuer
            .log()
            .contains("POST /azure/oidctoken?api-version=7.1&serviceConnectionId=conn-1"),
    );

    // HMAC mode: the wrapper's python3 signer produces the canonical bytes
    // the daemon checks (claims with quotes, backslashes and non-ASCII).
    let key_file = dir.path().join("runner.key");
    std::fs::write(&key_file, RUNNER_KEY).unwrap();
    let (home, out, run) = wrapper(
        "generic",
        format!(
            "[auth]\nrequire_runner_auth = true\nrunner_hmac_key_file = \"{}\"\n",
            key_file.display()
        ),
        &[
            ("KEYWARD_RUNNER_HMAC_KEY", RUNNER_KEY),
            ("KEYWARD_RUNNER_REPOSITORY", "acme/prod"),
            ("KEYWARD_RUNNER_ACTOR", "Zoë \"the\" \\ dev"),
            ("KEYWARD_RUNNER_REF", "refs/heads/main"),
        ],
        DEPLOY,
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
    let decision = json(&std::fs::read_to_string(out.join("decision.json")).unwrap());
    assert_eq!(decision["rule_id"], "ci.prod_only_from_acme", "{decision}");

    // --run: the command runs bound to the job's identity, and its status
    // is the step's.
    let inner = format!("{} eval --action deploy --target prod", common::BIN);
    for (repository, status) in [("acme/prod", 0), ("acme/fork", 2)] {
        let (home, out, run) = wrapper(
            "generic",
            format!(
                "[auth]\nrunner_hmac_key_file = \"{}\"\n",
                key_file.display()
            ),
            &[
                ("KEYWARD_RUNNER_HMAC_KEY", RUNNER_KEY),
                ("KEYWARD_RUNNER_REPOSITORY", repository),
            ],
            &["--run", "--", "sh", "-c", &inner],
        );
        assert_eq!(run.code, status, "{run:?}\n{}", home.log());
        assert!(out.join("audit-head.json").is_file());
    }
}

const DEPLOY: &[&str] = &["--action", "deploy", "--target", "prod"];

fn issuer_file(issuer: &Issuer, name: &str) -> String {
    std::fs::read_to_string(issuer.dir.join(name)).unwrap()
}

#[test]
fn offline_policy_tests_state_verified_claims_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("ci.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        json!([
            {"name": "verified", "request": {"action_type": "deploy"},
             "runner": {"repository": "acme/prod"},
             "decision": "allow", "rule_id": "ci.prod_only_from_acme"},
            {"name": "claimed in the request", "request": {"action_type": "deploy",
             "runner_auth": {"repository": "acme/prod"}},
             "decision": "block", "rule_id": "ci.deploy_needs_identity"},
        ])
        .to_string(),
    )
    .unwrap();
    let home = TestHome::new();
    let run = home.run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
}

/// A token verified once is remembered (its signature is not checked again),
/// but its expiry still is, on every use.
#[test]
fn a_remembered_token_still_expires() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ec("ec-1");
    let issuer = Issuer::start(&dir.path().join("issuer"), &jwks(&[&key]));
    let home = home_with(&oidc_config(&issuer, "leeway = \"0s\"\n"));
    home.start(&[]);
    let mut claims = github_claims("acme/prod");
    claims["exp"] = (now() + 2).into();
    let token = key.sign(&claims);
    assert_verified_allow(eval_with(&home, Some(&oidc(&token))));
    assert_verified_allow(eval_with(&home, Some(&oidc(&token))));
    let exp = claims["exp"].as_i64().unwrap();
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_refused(eval_with(&home, Some(&oidc(&token))), "expired");
}

/// A server in the middle with a certificate the pinned CA did not sign
/// (`jwks_ca_file`) cannot hand the daemon its own keys.
#[test]
fn jwks_from_a_server_the_pinned_ca_did_not_sign_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = Issuer::start(&dir.path().join("real"), &jwks(&[&TestKey::ec("real")]));
    let attacker_key = TestKey::ec("attacker");
    let impostor = Issuer::start(&dir.path().join("impostor"), &jwks(&[&attacker_key]));
    let config =
        oidc_config(&real, "").replace(&real.url("/jwks.json"), &impostor.url("/jwks.json"));
    let home = home_with(&config);
    home.start(&[]);
    let (code, decision) = eval_with(
        &home,
        Some(&oidc(&attacker_key.sign(&github_claims("acme/prod")))),
    );
    assert_refused((code, decision.clone()), "jwks unavailable");
    assert_eq!(impostor.requests("GET"), 0, "no request got past TLS");
}

/// The run's verified identity is what `runner.*` sees in the proxy's
/// `http_request` decisions too: an egress rule on the runner applies to
/// the run bound to it and to no other.
#[test]
fn egress_decisions_see_the_runs_verified_identity() {
    let home = home_with("[auth]\nrunner_hmac_key_file = \"runner.key\"\n");
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    let policy = home.path.parent().unwrap().join("egress.toml");
    std::fs::write(
        &policy,
        r#"[policy]
id = "egress"
default = "allow"
[[rules]]
id = "egress.prod_runner_stays_home"
action = "http_request"
target = "localhost:*/**"
when = { "runner.repository" = "acme/prod" }
decision = "block"
reason = "acme/prod's jobs do not call this host"
"#,
    )
    .unwrap();
    // Nothing listens there: an allowed request ends in a 502, a blocked
    // one in a 403 naming the rule, before any connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth_file = home.path.parent().unwrap().join("auth.json");
    let status_for = |repository: &str| {
        std::fs::write(
            &auth_file,
            hmac_auth(&json!({"repository": repository}), RUNNER_KEY, "default").to_string(),
        )
        .unwrap();
        let run = home.run(&[
            "run",
            "--runner-auth-file",
            auth_file.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &format!("curl -s -o /dev/null -D - http://localhost:{closed}/x | grep -i -e '^HTTP' -e x-keyward-blocked"),
        ]);
        assert_eq!(run.code, 0, "{run:?}\n{}", home.log());
        run.stdout
    };
    let prod = status_for("acme/prod");
    assert!(
        prod.contains("403") && prod.contains("egress.prod_runner_stays_home"),
        "{prod}"
    );
    let other = status_for("acme/other");
    assert!(
        other.contains("502") && other.contains("upstream_unreachable"),
        "{other}"
    );
}

/// Red-team findings, each performed: a process inside a run bound to an
/// identity cannot shed it (broken auth) or replace it (another signed
/// identity); `runner_auth.*` is how claims were verified, which a signer
/// cannot choose; the program never gets the keys or token endpoints that
/// would let it sign or mint an identity.
#[test]
fn a_run_keeps_its_identity_and_its_program_cannot_mint_another() {
    let home = home_with("[auth]\nrunner_hmac_key_file = \"runner.key\"\n");
    std::fs::write(home.file("runner.key"), RUNNER_KEY).unwrap();
    // Provenance rules: only OIDC may deploy "oidc-only"; HMAC claims
    // naming the same fields do not pass.
    std::fs::write(
        home.file("ci-policy.toml"),
        r#"[policy]
id = "ci"
default = "allow"
[[rules]]
id = "ci.no_deploy_from_forks"
action = "deploy"
target = "prod"
when = { "runner.repository" = "acme/fork*" }
decision = "block"
[[rules]]
id = "ci.oidc_only"
action = "deploy"
target = "oidc-only"
when = { "runner_auth.algorithm" = "OIDC-JWT" }
decision = "allow"
[[rules]]
id = "ci.oidc_only.default"
action = "deploy"
target = "oidc-only"
decision = "block"
"#,
    )
    .unwrap();
    let dir = home.path.parent().unwrap();
    let write = |name: &str, value: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path.display().to_string()
    };
    let forked = write(
        "forked.json",
        &hmac_auth(&json!({"repository": "acme/forked"}), RUNNER_KEY, "default"),
    );
    let prod = write(
        "prod.json",
        &hmac_auth(&json!({"repository": "acme/prod"}), RUNNER_KEY, "default"),
    );
    let junk = write("junk.json", &json!({"algorithm": "nope"}));
    let posing = write(
        "posing.json",
        &hmac_auth(
            &json!({"repository": "acme/prod", "algorithm": "OIDC-JWT", "issuer": "https://token.actions.githubusercontent.com"}),
            RUNNER_KEY,
            "default",
        ),
    );
    let script = format!(
        "env | grep -c -e RUNNER_HMAC -e RUNNER_AUTH_HMAC -e ID_TOKEN_REQUEST -e SYSTEM_ACCESSTOKEN; \
         for f in none {junk} {prod}; do \
           if [ $f = none ]; then keyward eval --action deploy --target prod >/dev/null; \
           else keyward eval --runner-auth-file $f --action deploy --target prod >/dev/null; fi; echo \"exit=$?\"; \
         done"
    );
    let out = home
        .cmd(&[
            "run",
            "--runner-auth-file",
            &forked,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env(
            "PATH",
            format!(
                "{}:{}",
                std::path::Path::new(common::BIN)
                    .parent()
                    .unwrap()
                    .display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("KEYWARD_RUNNER_HMAC_KEY", RUNNER_KEY)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-value")
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", "https://127.0.0.1:9/token")
        .output()
        .unwrap();
    let out = common::Run::from(out);
    // No identity-minting variable reached the program (grep -c prints 0
    // and exits 1: hence no code check on the whole script's first line).
    assert!(out.stdout.starts_with("0\n"), "{out:?}");
    // The run's identity (acme/forked) decides every time: with nothing
    // sent, with broken auth, and with another validly signed identity.
    assert_eq!(
        out.stdout.matches("exit=2").count(),
        3,
        "{out:?}\n{}",
        home.log()
    );
    // Outside any run, claims posing as OIDC provenance do not pass.
    let posing_run = home.run(&[
        "eval",
        "--runner-auth-file",
        &posing,
        "--action",
        "deploy",
        "--target",
        "oidc-only",
    ]);
    assert_eq!(posing_run.code, 2, "{posing_run:?}");
    assert!(
        posing_run.stdout.contains("ci.oidc_only.default"),
        "{posing_run:?}"
    );
}

/// A run can be tied only to the caller or its descendants, of the
/// caller's user, and to no pid another run has: never init.
#[test]
fn a_run_cannot_be_tied_to_someone_elses_process() {
    let home = home_with("");
    home.start(&[]);
    let create = |pid: u32| {
        home.http(
            "POST",
            "/v1/runs",
            Some(&format!(r#"{{"grants":[],"pid":{pid}}}"#)),
        )
    };
    for pid in [1, home.pid_in_file().unwrap()] {
        let (status, body) = create(pid);
        assert_eq!(status, 403, "{pid}: {body}");
        assert!(body.contains("bad_run_pid"), "{body}");
    }
    // A process that is not this test's descendant (setsid -f reparents it).
    let pid_file = home.path.parent().unwrap().join("orphan.pid");
    let started = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "setsid -f sh -c 'echo $$ > {}; exec sleep 30' >/dev/null 2>&1",
            pid_file.display()
        ))
        .status()
        .unwrap();
    assert!(started.success());
    assert!(common::wait_for(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    }));
    let orphan: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (status, body) = create(orphan);
    let _ = std::process::Command::new("kill")
        .arg(orphan.to_string())
        .status();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("neither the caller nor one of its descendants"),
        "{body}"
    );
    // Another user's process.
    let mut other = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    // setpriv runs as root until it switches users and execs.
    let switched = common::wait_for(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/status", other.id())).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534"))
        })
    });
    assert!(switched, "setpriv did not switch to uid 65534");
    let (status, body) = create(other.id());
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another user"), "{body}");
    // Our own child: accepted once; a second run on the same pid is not.
    let mut mine = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let first = create(mine.id());
    let second = create(mine.id());
    let _ = mine.kill();
    let _ = mine.wait();
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(second.0, 403, "{second:?}");
    assert!(second.1.contains("another run"), "{second:?}");
}
