//! System mode, for real: `keyward service install --system` into a
//! temporary root (a real `keyward` system user, its 0700 home, config and
//! unit), the daemon started as that user the way the unit starts it, and
//! other real users: one allowed (uses a grant through `keyward run`, reads
//! nothing of the home, is no administrator, sees only its own runs), one
//! not allowed (`peer_refused`). Needs root to create users; skipped
//! otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Run, json, wait_for};
use keyward_testkit::{Answer, Origin};

const SECRET: &str = "kw-system-SECRET-51c0ffee";
const AGENT: &str = "kwagent";
const OTHER: &str = "kwother";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A command that runs as `user` (its own groups only).
fn as_user(user: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
    ]);
    cmd
}

fn ensure_user(name: &str) -> u32 {
    let id = || {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    if let Some(uid) = id() {
        return uid;
    }
    let ok = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", name])
        .status()
        .unwrap()
        .success();
    assert!(ok, "useradd {name}");
    id().unwrap()
}

/// The installed system, its daemon and its files.
struct System {
    root: tempfile::TempDir,
    exe: PathBuf,
}

impl System {
    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }
    fn socket(&self) -> PathBuf {
        self.path("/run/keyward/keyward.sock")
    }
    fn home(&self) -> PathBuf {
        self.path("/var/lib/keyward")
    }

    /// `keyward ARGS` as `user` (`None`: root) with the system socket.
    fn keyward_as(&self, user: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = match user {
            Some(user) => {
                let mut c = as_user(user);
                c.arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.args(args)
            .env("KEYWARD_SOCKET", self.socket())
            .env("HOME", "/nonexistent")
            .env_remove("KEYWARD_HOME")
            .env_remove("KEYWARD_CONFIG")
            .stdin(Stdio::null())
            .current_dir("/");
        if user.is_none() {
            cmd.env("KEYWARD_HOME", self.home());
        }
        cmd.output().unwrap().into()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.home().join("keyward.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

#[test]
fn a_system_daemon_serves_named_users_who_cannot_read_its_files() {
    if !is_root() {
        eprintln!("SKIPPED: system mode needs root to create users");
        return;
    }
    let agent_uid = ensure_user(AGENT);
    ensure_user(OTHER);
    let root = tempfile::Builder::new()
        .prefix("kwsys")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy every user can run (the build tree may not be reachable).
    let exe = root.path().join("keyward");
    std::fs::copy(BIN, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The upstream answers `ok` and keeps each request's Authorization.
    let upstream = Origin::builder()
        .fallback(|_| Answer::bytes("ok"))
        .start_background();
    let (port, upstream_ca) = (upstream.port(), upstream.write_ca(root.path()));
    let sys = System { root, exe };

    // Install.
    let install = Command::new(&sys.exe)
        .args(["service", "install", "--system", "--root"])
        .arg(sys.root.path())
        .args(["--allow-uid", &agent_uid.to_string(), "--admin-uid", "0"])
        .output()
        .unwrap();
    assert!(install.status.success(), "{install:?}");
    let unit = std::fs::read_to_string(sys.path("/etc/systemd/system/keyward.service")).unwrap();
    for line in [
        "Type=notify",
        "User=keyward",
        "Environment=KEYWARD_SOCKET=/run/keyward/keyward.sock",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(line), "unit lacks {line:?}:\n{unit}");
    }
    let home_meta = std::fs::metadata(sys.home()).unwrap();
    assert_eq!(home_meta.mode() & 0o777, 0o700);
    let keyward_uid = home_meta.uid();
    assert_ne!(keyward_uid, 0, "the home belongs to the keyward user");

    // The grant, as an administrator would write it.
    let config_path = sys.path("/etc/keyward/keyward.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        format!(
            "{config}\n[proxy]\nupstream_ca = [\"{}\"]\n\n[grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n",
            upstream_ca.display()
        ),
    )
    .unwrap();

    // Start the daemon as the unit does: its user, its home, its socket
    // (systemd makes /run/keyward; here we do).
    let run_dir = sys.path("/run/keyward");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(keyward_uid), Some(home_meta.gid())).unwrap();
    let start = as_user("keyward")
        .arg(&sys.exe)
        .arg("--config")
        .arg(&config_path)
        .args(["daemon", "start", "--detach"])
        .env("KEYWARD_HOME", sys.home())
        .env("KEYWARD_SOCKET", sys.socket())
        .output()
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    assert_eq!(
        std::fs::metadata(sys.socket()).unwrap().mode() & 0o777,
        0o666,
        "the peer check, not the mode, decides who is served"
    );

    // Root administers.
    let set = Command::new(&sys.exe)
        .args(["secret", "set", "local-token"])
        .env("KEYWARD_SOCKET", sys.socket())
        .env("KEYWARD_HOME", sys.home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            common::feed_stdin(&mut c, SECRET.as_bytes());
            c.wait_with_output()
        })
        .unwrap();
    assert!(set.status.success(), "{set:?}");

    // The allowed user uses the grant through a run ...
    let url = format!("https://localhost:{port}/agent");
    let run = sys.keyward_as(
        Some(AGENT),
        &["run", "--grant", "local", "--", "curl", "-sS", &url],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(wait_for(Duration::from_secs(10), || {
        !upstream.received().is_empty()
    }));
    let authorizations: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("-").to_owned())
        .collect();
    assert_eq!(authorizations, [format!("Bearer {SECRET}")]);
    // ... but reads nothing of the home, and administers nothing.
    for path in [
        sys.home(),
        sys.home().join("vault"),
        sys.home().join("vault/identity.txt"),
    ] {
        let cat = as_user(AGENT).arg("cat").arg(&path).output().unwrap();
        assert!(
            !cat.status.success(),
            "{} readable: {cat:?}",
            path.display()
        );
        assert!(
            String::from_utf8_lossy(&cat.stderr).contains("Permission denied"),
            "{cat:?}"
        );
    }
    let list = sys.keyward_as(Some(AGENT), &["secret", "list"]);
    assert_eq!(list.code, 1, "{list:?}");
    assert!(list.stderr.contains("admin_only"), "{list:?}");
    assert!(!list.stdout.contains("local-token"), "{list:?}");

    // Runs are private to their user: root's run is invisible to the agent.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let (status, body) = common::http_on(
        &sys.socket(),
        "POST",
        "/v1/runs",
        Some(&format!("{{\"pid\":{}}}", sleeper.id())),
    );
    assert_eq!(status, 200, "{body}");
    let roots_run = json(&body)["run_id"].as_str().unwrap().to_owned();
    let agent_view: Run = as_user(AGENT)
        .args(["curl", "-sS", "--unix-socket"])
        .arg(sys.socket())
        .arg("http://k/v1/runs")
        .output()
        .unwrap()
        .into();
    assert_eq!(agent_view.code, 0, "{agent_view:?}");
    assert!(agent_view.stdout.contains("\"runs\""), "{agent_view:?}");
    assert!(!agent_view.stdout.contains(&roots_run), "{agent_view:?}");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // A user not named is refused at the door.
    let other = sys.keyward_as(Some(OTHER), &["grant", "list"]);
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stderr.contains("peer_refused"), "{other:?}");

    // The agent's requests are attributed to its uid in the evidence log.
    let marker = format!("\"uid\":{agent_uid}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_dir(sys.home().join("audit"))
                .unwrap()
                .flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&marker)))
        }),
        "no evidence record names uid {agent_uid}"
    );
    // The secret is in no file the agent can reach, nor in the run's output.
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    let public = std::fs::read_to_string(run_dir.join("bundle.pem")).unwrap();
    assert!(!public.contains(SECRET));

    // Uninstall removes the unit; the config, edited since, stays, and so
    // does the home (the vault) without --purge.
    let pid = std::fs::read_to_string(sys.home().join("keyward.pid")).unwrap();
    let _ = Command::new("kill").arg(pid.trim()).status();
    let uninstall = Command::new(&sys.exe)
        .args(["service", "uninstall", "--system", "--root"])
        .arg(sys.root.path())
        .output()
        .unwrap();
    assert!(uninstall.status.success(), "{uninstall:?}");
    let said = String::from_utf8_lossy(&uninstall.stdout);
    assert!(
        !sys.path("/etc/systemd/system/keyward.service").exists(),
        "{said}"
    );
    assert!(
        config_path.exists() && said.contains("changed since install"),
        "{said}"
    );
    assert!(sys.home().join("vault").exists(), "{said}");
    let again = Command::new(&sys.exe)
        .args(["service", "uninstall", "--system", "--root"])
        .arg(sys.root.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no keyward service installed"),
        "{again:?}"
    );
}

/// `--user` writes a user unit in the home and removes only that file.
#[test]
fn a_user_unit_is_installed_and_removed() {
    let home = tempfile::tempdir().unwrap();
    let keyward = |args: &[&str]| -> Run {
        Command::new(BIN)
            .args(args)
            .env("HOME", home.path())
            .output()
            .unwrap()
            .into()
    };
    let install = keyward(&["service", "install", "--user"]);
    assert_eq!(install.code, 0, "{install:?}");
    let unit = home.path().join(".config/systemd/user/keyward.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("Type=notify") && text.contains("daemon start"),
        "{text}"
    );
    assert!(install.stdout.contains("systemctl --user"), "{install:?}");
    assert_eq!(keyward(&["service", "uninstall", "--user"]).code, 0);
    assert!(!unit.exists());
    let again = keyward(&["service", "uninstall", "--user"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("no keyward service installed"),
        "{again:?}"
    );
    // A scope is required, and only one.
    assert_eq!(keyward(&["service", "install"]).code, 2);
    assert_eq!(
        keyward(&["service", "install", "--user", "--system"]).code,
        2
    );
}

/// `[admin]` is checked at load: a group that does not exist is a config
/// error naming the key.
#[test]
fn an_unknown_admin_group_is_a_config_error() {
    let home = common::TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        "[admin]\nallow_groups = [\"no-such-group-kw\"]\n",
    )
    .unwrap();
    let check = home.run(&["config", "check"]);
    assert_eq!(check.code, 64, "{check:?}");
    assert!(
        check.stderr.contains("admin.allow_groups") && check.stderr.contains("no-such-group-kw"),
        "{check:?}"
    );
}
