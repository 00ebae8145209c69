//! Team mode's tokens and roles, driven as an administrator would (the CLI)
//! and used as a team member's tool would (a bearer token on the admin
//! API): issue, use, rotate, revoke, expiry, scopes, grants, rate limits
//! with Retry-After, attribution in the evidence log, role changes and
//! their refusals, and the attacks: a token inside a run, a token never
//! written anywhere in the home, a state file the daemon cannot read.

mod common;

use common::{TestHome, http_exchange, json};

/// A request with `Authorization: Bearer <token>`: status, head, body.
fn with_token(
    home: &TestHome,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    http_exchange(
        &home.socket(),
        method,
        path,
        &[&format!("authorization: Bearer {token}")],
        body,
    )
    .expect("an answer from the daemon")
}

fn error_code(body: &str) -> String {
    json(body)["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

const EVALUATE: &str = r#"{"action_type":"read_file","target":"/etc/hosts"}"#;

fn issue(home: &TestHome, user: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "issue", "--user", user, "--role", role];
    args.extend_from_slice(extra);
    let out = home.run(&args);
    assert_eq!(out.code, 0, "{out:?}");
    // The token alone on stdout; what it is, on stderr.
    let token = out.stdout.trim().to_owned();
    assert!(token.starts_with("kwt_") && token.len() == 36, "{out:?}");
    assert!(out.stderr.contains("shown only this once"), "{out:?}");
    token
}

#[test]
fn a_token_works_by_its_role_until_rotated_or_revoked_and_is_kept_only_as_a_hash() {
    let home = TestHome::new();
    home.start(&[]);
    let token = issue(&home, "ci", "runner", &["--expires", "30"]);

    // Its role's scopes decide: decisions and runs yes, secrets and admin no.
    let (status, _, body) = with_token(&home, &token, "POST", "/v1/evaluate", Some(EVALUATE));
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = with_token(&home, &token, "GET", "/v1/runs", None);
    assert_eq!(status, 200, "{body}");
    for (method, path) in [
        ("GET", "/v1/secrets"),
        ("POST", "/v1/vault/seal"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/shutdown"),
    ] {
        let (status, _, body) = with_token(&home, &token, method, path, None);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "scope_denied"),
            "{path}: {body}"
        );
        assert!(body.contains("role runner"), "{body}");
    }
    // Health stays open, token or not.
    assert_eq!(
        with_token(&home, "kwt_bogus", "GET", "/v1/health", None).0,
        200
    );

    // Listed without its value; the home holds it nowhere.
    let list = home.run(&["token", "list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let listed = json(&list.stdout);
    assert_eq!(listed["tokens"][0]["user"], "ci");
    assert_eq!(listed["tokens"][0]["role"], "runner");
    assert!(listed["tokens"][0]["last_used"].is_string(), "{listed}");
    assert!(!list.stdout.contains(&token[4..]), "{list:?}");
    assert!(home.files_containing(&token[4..]).is_empty());

    // Every request is on record under the token's user.
    let tail = home.run(&["audit", "tail", "-n", "50", "--json"]);
    assert!(
        tail.stdout
            .lines()
            .any(|l| l.contains(r#""path":"/v1/evaluate""#) && l.contains(r#""user":"ci""#)),
        "{tail:?}"
    );
    assert!(!tail.stdout.contains(&token[4..]));

    // Rotation: the old value fails at once, the new one works.
    let rotated = home.run(&["token", "rotate", "ci"]);
    assert_eq!(rotated.code, 0, "{rotated:?}");
    let new = rotated.stdout.trim().to_owned();
    let (status, _, body) = with_token(&home, &token, "GET", "/v1/runs", None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "token_invalid"),
        "{body}"
    );
    assert_eq!(with_token(&home, &new, "GET", "/v1/runs", None).0, 200);

    // Revocation: it fails too, and a second revoke says there is none.
    assert_eq!(home.run(&["token", "revoke", "ci"]).code, 0);
    assert_eq!(with_token(&home, &new, "GET", "/v1/runs", None).0, 401);
    let again = home.run(&["token", "revoke", "ci"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("ci holds no token"), "{again:?}");

    // What is not a bearer token is refused as one.
    for header in [
        "Basic Y2k6eA==",
        "Bearer",
        "Bearer kwt_00000000000000000000000000000000",
    ] {
        let (status, _, body) = http_exchange(
            &home.socket(),
            "GET",
            "/v1/runs",
            &[&format!("authorization: {header}")],
            None,
        )
        .unwrap();
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "token_invalid"),
            "{header}"
        );
    }
}

#[test]
fn an_expired_token_is_refused_naming_when() {
    use sha2::Digest as _;
    let home = TestHome::new();
    // A token that expired in 2020, written as the daemon would have.
    let token = "kwt_0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(home.file("auth")).unwrap();
    std::fs::write(
        home.file("auth/tokens.toml"),
        format!(
            "version = 1\n[[tokens]]\nuser = \"old\"\nrole = \"member\"\nsha256 = \"{}\"\n\
             created = \"2019-01-01T00:00:00Z\"\nexpires = \"2020-01-01T00:00:00Z\"\n",
            hex::encode(sha2::Sha256::digest(token))
        ),
    )
    .unwrap();
    home.start(&[]);
    let (status, _, body) = with_token(&home, token, "POST", "/v1/evaluate", Some(EVALUATE));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "token_expired"),
        "{body}"
    );
    assert!(body.contains("expired at 2020-01-01T00:00:00Z"), "{body}");
}

#[test]
fn roles_limit_grants_and_rate_and_are_deleted_only_when_unused() {
    let home = TestHome::new();
    home.start(&[]);
    let created = home.run(&[
        "role",
        "create",
        "deployer",
        "--scope",
        "evaluate",
        "--scope",
        "runs.create",
        "--scope",
        "grants.use:github",
        "--rate-limit",
        "3/1h",
    ]);
    assert_eq!(created.code, 0, "{created:?}");
    assert!(
        created.stdout.contains("at most 3/1h per user"),
        "{created:?}"
    );
    let token = issue(&home, "dep", "deployer", &[]);

    // A run may ask only for the grants the role names.
    let (status, _, body) = with_token(
        &home,
        &token,
        "POST",
        "/v1/runs",
        Some(r#"{"grants":["openai"]}"#),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "scope_denied"),
        "{body}"
    );
    assert!(body.contains("grants.use:openai"), "{body}");

    // The rate limit: the third request of the hour is the last, and the
    // fourth says when to come back.
    for _ in 0..2 {
        assert_eq!(
            with_token(&home, &token, "POST", "/v1/evaluate", Some(EVALUATE)).0,
            200
        );
    }
    let (status, head, body) = with_token(&home, &token, "POST", "/v1/evaluate", Some(EVALUATE));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "rate_limited"),
        "{body}"
    );
    let retry_after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("a Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&retry_after), "{retry_after}");

    // Deleting a role in use is refused, naming its users.
    let refused = home.run(&["role", "delete", "deployer"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("held by dep"), "{refused:?}");
    // Built-in roles do not change; unknown scopes and limits are said.
    for (args, needle) in [
        (
            vec!["role", "update", "admin", "--scope", "evaluate"],
            "built-in role",
        ),
        (
            vec!["role", "create", "x", "--scope", "everything"],
            "unknown scope \"everything\"",
        ),
        (
            vec![
                "role",
                "create",
                "y",
                "--scope",
                "evaluate",
                "--rate-limit",
                "5",
            ],
            "e.g. 120/60s",
        ),
        (
            vec!["token", "issue", "--user", "z", "--role", "nope"],
            "no role named nope",
        ),
        (
            vec!["token", "issue", "--user", "dep", "--role", "runner"],
            "holds a token already",
        ),
    ] {
        let out = home.run(&args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {out:?}");
    }
    // An update: no limit any more; the role's holders see it at once.
    let updated = home.run(&["role", "update", "deployer", "--rate-limit", "none"]);
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!(
        with_token(&home, &token, "POST", "/v1/evaluate", Some(EVALUATE)).0,
        200
    );
    assert_eq!(home.run(&["token", "revoke", "dep"]).code, 0);
    assert_eq!(home.run(&["role", "delete", "deployer"]).code, 0);
    let roles = home.run(&["role", "list", "--json"]);
    let names: Vec<String> = json(&roles.stdout)["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin", "member", "runner"]);
}

#[test]
fn a_tokens_runs_are_its_users_own() {
    let home = TestHome::new();
    home.start(&[]);
    let ci = issue(&home, "ci", "runner", &[]);
    let other = issue(&home, "other", "runner", &[]);
    let admin = issue(&home, "boss", "admin", &[]);
    let (status, _, body) = with_token(&home, &ci, "POST", "/v1/runs", Some(r#"{"grants":[]}"#));
    assert_eq!(status, 200, "{body}");
    let id = json(&body)["run_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/runs/{id}");
    let listed = |token: &str| {
        let (_, _, body) = with_token(&home, token, "GET", "/v1/runs", None);
        json(&body)["runs"].as_array().unwrap().len()
    };
    assert_eq!(listed(&ci), 1);
    assert_eq!(listed(&other), 0, "another token user sees nothing of it");
    assert_eq!(listed(&admin), 1, "the admin scope sees every run");
    for method in ["GET", "PATCH", "DELETE"] {
        let body = (method == "PATCH").then_some("{}");
        let (status, _, body) = with_token(&home, &other, method, &path, body);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (404, "run_not_found"),
            "{method}"
        );
    }
    let (status, _, body) = with_token(&home, &ci, "DELETE", &path, None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_token_gives_a_program_inside_a_run_nothing() {
    let home = TestHome::new();
    home.start(&[]);
    let admin = issue(&home, "root-token", "admin", &[]);
    // Even an admin token: the run's confinement is decided first.
    let run = home.run(&[
        "run",
        "--",
        "curl",
        "-sS",
        "--unix-socket",
        home.socket().to_str().unwrap(),
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "http://k/v1/tokens",
    ]);
    assert!(run.stdout.contains("run_confined"), "{run:?}");
    assert!(!run.stdout.contains("root-token\""), "{run:?}");
}

#[test]
fn a_state_file_the_daemon_cannot_read_stops_its_start() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.file("auth")).unwrap();
    std::fs::write(home.file("auth/roles.toml"), "version = 7\n").unwrap();
    let start = home.run(&["daemon", "start"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("roles.toml") && start.stderr.contains("format version 7 is newer"),
        "{start:?}"
    );
}
