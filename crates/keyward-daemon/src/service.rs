//! `keyward service install|uninstall`: the daemon as a systemd service.
//! System mode runs it as its own `keyward` user (the agent cannot read its
//! files at all), with its socket under `/run/keyward/` opened to the users
//! the config names; user mode installs a user unit.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The system user and group.
pub const SYSTEM_USER: &str = "keyward";
/// The system daemon's home.
pub const SYSTEM_HOME: &str = "/var/lib/keyward";
/// The system daemon's config.
pub const SYSTEM_CONFIG: &str = "/etc/keyward/keyward.toml";
/// The system daemon's socket.
pub const SYSTEM_SOCKET: &str = "/run/keyward/keyward.sock";
const SYSTEM_UNIT: &str = "etc/systemd/system/keyward.service";
const MANIFEST: &str = "etc/keyward/install.json";

/// What `install --system` is asked to set up.
#[derive(Debug, Clone, Default)]
pub struct SystemInstall {
    /// Where the files go (`/`; another directory for packaging or tests).
    pub root: PathBuf,
    /// The keyward binary the unit starts.
    pub exe: PathBuf,
    /// `admin.allow_uids`.
    pub allow_uids: Vec<u32>,
    /// `admin.allow_groups`.
    pub allow_groups: Vec<String>,
    /// `admin.admin_uids`.
    pub admin_uids: Vec<u32>,
}

/// What an install or uninstall did, for the user.
#[derive(Debug, Default, Serialize)]
pub struct ServiceReport {
    /// Lines to print.
    pub done: Vec<String>,
    /// What to do next.
    pub next: Vec<String>,
}

/// Written by install, read by uninstall: exactly what install made.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    user_created: bool,
    /// Files install wrote, with the SHA-256 of what it wrote.
    files: Vec<(PathBuf, String)>,
}

/// Why a service operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// System mode needs root.
    #[error(
        "`keyward service {0} --system` must run as root (it creates a user and writes under /etc)"
    )]
    NotRoot(&'static str),
    /// A step failed.
    #[error("{what}: {why}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        why: String,
    },
    /// Nothing was installed there.
    #[error("no keyward service installed under {} ({} is missing)", root.display(), manifest.display())]
    NotInstalled {
        /// The root.
        root: PathBuf,
        /// The manifest looked for.
        manifest: PathBuf,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |e| ServiceError::Step {
        what,
        why: e.to_string(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `path` under `root` (`root` + the path without its leading `/`).
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The systemd unit of the system daemon.
pub fn system_unit(exe: &Path) -> String {
    format!(
        "# Installed by `keyward service install --system`.\n\
         [Unit]\n\
         Description=keyward credential broker and policy daemon\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         User={SYSTEM_USER}\n\
         Group={SYSTEM_USER}\n\
         Environment=KEYWARD_HOME={SYSTEM_HOME}\n\
         Environment=KEYWARD_SOCKET={SYSTEM_SOCKET}\n\
         ExecStart={exe} --config {SYSTEM_CONFIG} daemon start\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=on-failure\n\
         RuntimeDirectory=keyward\n\
         RuntimeDirectoryMode=0755\n\
         StateDirectory=keyward\n\
         StateDirectoryMode=0700\n\
         UMask=0077\n\
         LimitCORE=0\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         MemoryDenyWriteExecute=yes\n\
         LockPersonality=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         RestrictNamespaces=yes\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exe = exe.display()
    )
}

/// The systemd user unit: the daemon as the user, in the default home.
pub fn user_unit(exe: &Path) -> String {
    format!(
        "# Installed by `keyward service install --user`.\n\
         [Unit]\n\
         Description=keyward credential broker and policy daemon\n\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={exe} daemon start\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=on-failure\n\
         UMask=0077\n\
         LimitCORE=0\n\
         NoNewPrivileges=yes\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = exe.display()
    )
}

/// The system daemon's starting config: who may use the socket.
fn system_config(opts: &SystemInstall) -> String {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let groups = opts
        .allow_groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# keyward system daemon (written by `keyward service install --system`).\n\
         # The daemon runs as the `{SYSTEM_USER}` user; its home {SYSTEM_HOME} is\n\
         # readable by that user only. Edit as root, then `systemctl reload keyward`.\n\
         \n\
         [admin]\n\
         # Users who may create and use runs, list grants and ask for decisions.\n\
         allow_uids = [{}]\n\
         allow_groups = [{groups}]\n\
         # Users who may also manage secrets, the vault, the CA and the daemon.\n\
         admin_uids = [{}]\n",
        list(&opts.allow_uids),
        list(&opts.admin_uids),
    )
}

/// A `uid:gid` for `user` from `/etc/passwd`, if it exists.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&user) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), ServiceError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(step(format!("cannot run {program}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServiceError::Step {
            what: format!("{program} {}", args.join(" ")),
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Writes `text` to `path` with `mode` (atomically), creating its directory.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ServiceError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(step(format!("cannot create {}", dir.display())))?;
    }
    keyward_vault::write_atomic(path, text.as_bytes()).map_err(|e| ServiceError::Step {
        what: format!("cannot write {}", path.display()),
        why: e.to_string(),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(step(format!("cannot set the mode of {}", path.display())))
}

/// Installs the system service: the `keyward` user (created if missing),
/// its 0700 home, a config naming who may use the socket (kept if one
/// exists), the hardened unit, and a manifest of what was made.
pub fn install_system(opts: &SystemInstall) -> Result<ServiceReport, ServiceError> {
    if keyward_sys::effective_uid() != 0 {
        return Err(ServiceError::NotRoot("install"));
    }
    let mut report = ServiceReport::default();
    let mut user_created = false;
    if lookup_user(SYSTEM_USER).is_none() {
        run_tool(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--home-dir",
                SYSTEM_HOME,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
        )?;
        user_created = true;
        report
            .done
            .push(format!("created the system user {SYSTEM_USER}"));
    }
    let (uid, gid) = lookup_user(SYSTEM_USER).ok_or_else(|| ServiceError::Step {
        what: format!("cannot find the user {SYSTEM_USER}"),
        why: "not in /etc/passwd".to_owned(),
    })?;

    let home = under(&opts.root, SYSTEM_HOME);
    if let Some(parent) = home.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(step(format!("cannot create {}", parent.display())))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&home)
        .map_err(step(format!("cannot create {}", home.display())))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .map_err(step(format!("cannot set the mode of {}", home.display())))?;
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).map_err(step(format!(
        "cannot give {} to {SYSTEM_USER}",
        home.display()
    )))?;
    report
        .done
        .push(format!("home {} (0700, {SYSTEM_USER})", home.display()));

    let mut files = Vec::new();
    let config = under(&opts.root, SYSTEM_CONFIG);
    if config.exists() {
        report
            .done
            .push(format!("kept the existing config {}", config.display()));
    } else {
        let text = system_config(opts);
        write_file(&config, &text, 0o644)?;
        files.push((config.clone(), sha256_hex(text.as_bytes())));
        report.done.push(format!("config {}", config.display()));
    }
    let unit = opts.root.join(SYSTEM_UNIT);
    let text = system_unit(&opts.exe);
    write_file(&unit, &text, 0o644)?;
    files.push((unit.clone(), sha256_hex(text.as_bytes())));
    report.done.push(format!("unit {}", unit.display()));

    let manifest = Manifest {
        user_created,
        files,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| ServiceError::Step {
        what: "cannot write the install manifest".to_owned(),
        why: e.to_string(),
    })?;
    write_file(&opts.root.join(MANIFEST), &json, 0o644)?;
    report.next = vec![
        "systemctl daemon-reload && systemctl enable --now keyward".to_owned(),
        format!("clients: export KEYWARD_SOCKET={SYSTEM_SOCKET}"),
    ];
    Ok(report)
}

/// Removes what `install_system` made under `root`: the unit, the config
/// if it is unchanged since install, the manifest. The home (with the
/// vault) and the user stay unless `purge`, which also removes the home and
/// the user when install created it.
pub fn uninstall_system(root: &Path, purge: bool) -> Result<ServiceReport, ServiceError> {
    if keyward_sys::effective_uid() != 0 {
        return Err(ServiceError::NotRoot("uninstall"));
    }
    let manifest_path = root.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|_| ServiceError::NotInstalled {
        root: root.to_owned(),
        manifest: manifest_path.clone(),
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ServiceError::Step {
        what: format!("cannot read {}", manifest_path.display()),
        why: e.to_string(),
    })?;
    let mut report = ServiceReport::default();
    for (file, sha) in &manifest.files {
        match std::fs::read(file) {
            Ok(bytes) if sha256_hex(&bytes) == *sha => {
                std::fs::remove_file(file)
                    .map_err(step(format!("cannot remove {}", file.display())))?;
                report.done.push(format!("removed {}", file.display()));
            }
            Ok(_) => report
                .done
                .push(format!("kept {} (changed since install)", file.display())),
            Err(_) => {}
        }
    }
    let home = under(root, SYSTEM_HOME);
    if purge {
        if home.exists() {
            std::fs::remove_dir_all(&home)
                .map_err(step(format!("cannot remove {}", home.display())))?;
            report
                .done
                .push(format!("removed {} (vault included)", home.display()));
        }
        if manifest.user_created && lookup_user(SYSTEM_USER).is_some() {
            run_tool("userdel", &[SYSTEM_USER])?;
            report.done.push(format!("removed the user {SYSTEM_USER}"));
        }
    } else {
        report.done.push(format!(
            "kept {} (the vault) and the user {SYSTEM_USER}; --purge removes them",
            home.display()
        ));
    }
    std::fs::remove_file(&manifest_path)
        .map_err(step(format!("cannot remove {}", manifest_path.display())))?;
    report.next = vec!["systemctl daemon-reload".to_owned()];
    Ok(report)
}

/// The user unit's path under `user_home`.
pub fn user_unit_path(user_home: &Path) -> PathBuf {
    user_home.join(".config/systemd/user/keyward.service")
}

/// Installs the user unit.
pub fn install_user(user_home: &Path, exe: &Path) -> Result<ServiceReport, ServiceError> {
    let unit = user_unit_path(user_home);
    write_file(&unit, &user_unit(exe), 0o644)?;
    Ok(ServiceReport {
        done: vec![format!("unit {}", unit.display())],
        next: vec![
            "systemctl --user daemon-reload && systemctl --user enable --now keyward".to_owned(),
        ],
    })
}

/// Removes the user unit if it is the one install wrote for `exe`.
pub fn uninstall_user(user_home: &Path) -> Result<ServiceReport, ServiceError> {
    let unit = user_unit_path(user_home);
    match std::fs::read_to_string(&unit) {
        Ok(text) if text.starts_with("# Installed by `keyward service install --user`.") => {
            std::fs::remove_file(&unit)
                .map_err(step(format!("cannot remove {}", unit.display())))?;
            Ok(ServiceReport {
                done: vec![format!("removed {}", unit.display())],
                next: vec!["systemctl --user daemon-reload".to_owned()],
            })
        }
        Ok(_) => Err(ServiceError::Step {
            what: format!("{} was not written by keyward", unit.display()),
            why: "left as it is".to_owned(),
        }),
        Err(_) => Err(ServiceError::NotInstalled {
            root: user_home.to_owned(),
            manifest: unit,
        }),
    }
}
