//! The file-backed team state as a server uses it: token lifecycle (issue,
//! use, rotate, revoke, expiry), roles (create, update, delete, refusals),
//! the gate's errors, reopening from disk, and files that hold no token
//! value and refuse what this version cannot read.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant, SystemTime};

use keyward_auth::{
    AuthError, AuthState as _, FileAuthState, RateLimiter, RoleSpec, Scope, authorize,
};

fn spec(scopes: &[&str], limit: Option<&str>) -> RoleSpec {
    RoleSpec {
        scopes: Some(scopes.iter().map(|s| (*s).to_owned()).collect()),
        rate_limit: limit.map(str::to_owned),
        description: Some("for tests".into()),
    }
}

#[test]
fn a_token_works_until_rotated_or_revoked_and_reopens_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    let now = SystemTime::now();
    let mut state = FileAuthState::open(&auth).unwrap();
    let issued = state
        .issue("ci", "runner", None, "the CI fleet", now)
        .unwrap();
    let value = issued.value.expose().to_owned();
    assert!(value.starts_with("kwt_") && value.len() == 36, "{value}");

    let who = state.authenticate(&value, now).unwrap();
    assert_eq!(who.user, "ci");
    assert_eq!(who.role.name, "runner");

    // One token per user: a second issue says what to do instead.
    let again = state.issue("ci", "member", None, "", now).unwrap_err();
    assert!(matches!(again, AuthError::UserHasToken(_)), "{again}");
    assert!(again.to_string().contains("token rotate ci"), "{again}");

    // The files: private, versioned, holding the hash and never the value.
    let tokens = std::fs::read_to_string(auth.join("tokens.toml")).unwrap();
    assert!(!tokens.contains(&value[4..]), "{tokens}");
    assert!(tokens.contains("version = 1"), "{tokens}");
    let mode = std::fs::metadata(auth.join("tokens.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Reopened (a restart): the same token works, with its last use kept.
    state.record_use("ci", now);
    state.persist_usage().unwrap();
    let reopened = FileAuthState::open(&auth).unwrap();
    assert_eq!(reopened.authenticate(&value, now).unwrap().user, "ci");
    assert!(reopened.tokens()[0].last_used.is_some());

    // Rotation: the old value fails, the new one works with the same role.
    let mut state = reopened;
    let rotated = state.rotate("ci", now).unwrap();
    assert!(matches!(
        state.authenticate(&value, now),
        Err(AuthError::TokenInvalid)
    ));
    let new_value = rotated.value.expose().to_owned();
    assert_eq!(
        state.authenticate(&new_value, now).unwrap().role.name,
        "runner"
    );

    // Revocation: it fails, and so does a second revoke.
    state.revoke("ci").unwrap();
    assert!(matches!(
        state.authenticate(&new_value, now),
        Err(AuthError::TokenInvalid)
    ));
    assert!(matches!(state.revoke("ci"), Err(AuthError::NoToken(_))));
    assert!(matches!(
        FileAuthState::open(&auth)
            .unwrap()
            .authenticate(&new_value, now),
        Err(AuthError::TokenInvalid)
    ));
}

#[test]
fn expiry_is_kept_through_rotation_and_named_when_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let day = Duration::from_secs(86_400);
    let mut state = FileAuthState::open(dir.path()).unwrap();
    let issued = state
        .issue("bob", "member", Some(30 * day), "", t0)
        .unwrap();
    assert_eq!(issued.record.expires, Some(t0 + 30 * day));
    let value = issued.value.expose().to_owned();
    assert!(state.authenticate(&value, t0 + 29 * day).is_ok());
    let expired = state.authenticate(&value, t0 + 30 * day).unwrap_err();
    assert_eq!(expired.code(), "token_expired");
    assert_eq!(expired.status(), 401);
    assert!(
        expired
            .to_string()
            .contains("expired at 2027-02-14T08:00:00Z"),
        "{expired}"
    );
    // A rotation on day 40 gives 30 days from then.
    let rotated = state.rotate("bob", t0 + 40 * day).unwrap();
    assert_eq!(rotated.record.expires, Some(t0 + 70 * day));
    let reopened = FileAuthState::open(dir.path()).unwrap();
    assert_eq!(reopened.tokens()[0].expires, Some(t0 + 70 * day));
    // And rotate-all keeps each span too.
    let mut state = reopened;
    state.issue("forever", "runner", None, "", t0).unwrap();
    let all = state.rotate_all(t0 + 50 * day).unwrap();
    assert_eq!(all.len(), 2);
    let by_user = |u: &str| all.iter().find(|i| i.record.user == u).unwrap();
    assert_eq!(by_user("bob").record.expires, Some(t0 + 80 * day));
    assert_eq!(by_user("forever").record.expires, None);
}

#[test]
fn unknown_and_malformed_tokens_are_invalid_alike() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let mut state = FileAuthState::open(dir.path()).unwrap();
    let good = state.issue("ci", "runner", None, "", now).unwrap();
    let good = good.value.expose();
    for presented in [
        "",
        "kwt_",
        "kwt_00000000000000000000000000000000",
        &good[..good.len() - 1],
        &good.to_uppercase(),
        &format!("{good} "),
        &format!("Bearer {good}"),
    ] {
        let err = state.authenticate(presented, now).unwrap_err();
        assert_eq!(err.code(), "token_invalid", "{presented:?}");
        assert_eq!(err.status(), 401);
    }
}

#[test]
fn roles_are_created_changed_and_deleted_only_when_nobody_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let mut state = FileAuthState::open(dir.path()).unwrap();
    let names: Vec<String> = state.roles().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["admin", "member", "runner"]);

    let deployer = state
        .create_role(
            "deployer",
            &spec(&["evaluate", "grants.use:github"], Some("120/60s")),
        )
        .unwrap();
    assert!(deployer.allows(&Scope::GrantsUse(Some("github".into()))));
    assert!(!deployer.allows(&Scope::GrantsUse(Some("openai".into()))));
    let mode = std::fs::metadata(dir.path().join("roles.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Refusals, each saying why.
    for (name, spec, code) in [
        ("deployer", spec(&["evaluate"], None), "conflict"),
        ("admin", spec(&["evaluate"], None), "builtin_role"),
        ("Bad Name", spec(&["evaluate"], None), "bad_request"),
        ("empty", spec(&[], None), "bad_request"),
        ("typo", spec(&["evaluat"], None), "bad_request"),
        ("fast", spec(&["evaluate"], Some("0/1s")), "bad_request"),
    ] {
        let err = state.create_role(name, &spec).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
    }
    assert!(matches!(
        state.update_role("runner", &spec(&["admin"], None)),
        Err(AuthError::BuiltinRole(_))
    ));
    assert!(matches!(
        state.delete_role("member"),
        Err(AuthError::BuiltinRole(_))
    ));
    assert!(matches!(
        state.update_role("nope", &spec(&["admin"], None)),
        Err(AuthError::UnknownRole { .. })
    ));

    // A role in use is not deleted; the message names its users.
    state.issue("alice", "deployer", None, "", now).unwrap();
    state.issue("carol", "deployer", None, "", now).unwrap();
    let in_use = state.delete_role("deployer").unwrap_err();
    assert_eq!(in_use.status(), 409);
    assert!(in_use.to_string().contains("alice, carol"), "{in_use}");

    // An update reaches the users at once (their next request).
    let changed = state
        .update_role(
            "deployer",
            &RoleSpec {
                scopes: Some(vec!["evaluate".into()]),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        changed.rate_limit.unwrap().max,
        120,
        "unchanged fields stay"
    );
    let reopened = FileAuthState::open(dir.path()).unwrap();
    let deployer = reopened
        .roles()
        .into_iter()
        .find(|r| r.name == "deployer")
        .unwrap();
    assert_eq!(deployer.scopes, [Scope::Evaluate]);
    assert_eq!(deployer.description, "for tests");

    let mut state = reopened;
    state.revoke("alice").unwrap();
    state.revoke("carol").unwrap();
    state.delete_role("deployer").unwrap();
    assert!(
        FileAuthState::open(dir.path())
            .unwrap()
            .roles()
            .iter()
            .all(|r| r.name != "deployer")
    );
}

#[test]
fn the_gate_checks_scope_then_rate_limit_with_a_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let mut state = FileAuthState::open(dir.path()).unwrap();
    state
        .create_role("slow", &spec(&["evaluate"], Some("2/60s")))
        .unwrap();
    let token = state.issue("ci", "slow", None, "", now).unwrap();
    let who = state.authenticate(token.value.expose(), now).unwrap();
    let limiter = RateLimiter::default();
    let t0 = Instant::now();

    let denied = authorize(&who, &Scope::SecretsWrite, &limiter, t0).unwrap_err();
    assert_eq!((denied.code(), denied.status()), ("scope_denied", 403));
    assert!(
        denied.to_string().contains("role slow")
            && denied.to_string().contains("scope secrets.write"),
        "{denied}"
    );
    authorize(&who, &Scope::Evaluate, &limiter, t0).unwrap();
    authorize(
        &who,
        &Scope::Evaluate,
        &limiter,
        t0 + Duration::from_secs(1),
    )
    .unwrap();
    let limited = authorize(
        &who,
        &Scope::Evaluate,
        &limiter,
        t0 + Duration::from_secs(20),
    )
    .unwrap_err();
    assert_eq!((limited.code(), limited.status()), ("rate_limited", 429));
    match limited {
        AuthError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_secs(40));
        }
        other => panic!("{other}"),
    }
    // A scope refusal is not counted against the window.
    authorize(
        &who,
        &Scope::Evaluate,
        &limiter,
        t0 + Duration::from_secs(60),
    )
    .unwrap();
}

#[test]
fn files_this_version_cannot_read_are_refused_naming_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
    for (file, text, needle) in [
        ("tokens.toml", "version = 2\n", "format version 2 is newer"),
        ("roles.toml", "version = 9\n", "format version 9 is newer"),
        ("tokens.toml", "version = 1\nbogus = 1\n", "unknown field"),
        (
            "tokens.toml",
            "version = 1\n[[tokens]]\nuser = \"ci\"\nrole = \"nope\"\nsha256 = \"00\"\ncreated = \"2026-01-01T00:00:00Z\"\n",
            "tokens[0] (ci): sha256 is not 64 hex digits",
        ),
        (
            "roles.toml",
            "version = 1\n[roles.admin]\nscopes = [\"evaluate\"]\n",
            "roles.admin: is a built-in role",
        ),
        (
            "roles.toml",
            "version = 1\n[roles.x]\nscopes = [\"everything\"]\n",
            "roles.x: unknown scope \"everything\"",
        ),
    ] {
        let _ = std::fs::remove_file(dir.path().join("tokens.toml"));
        let _ = std::fs::remove_file(dir.path().join("roles.toml"));
        write(file, text);
        let err = FileAuthState::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(file), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}
