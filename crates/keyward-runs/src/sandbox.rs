//! What `keyward run --sandbox` lets a program touch: the built-in profile
//! (system directories read-only, the working directory, temporary files
//! and the user's caches writable), profiles from `[sandbox.profiles.NAME]`
//! and paths given on the command line; never the keyward home or the
//! config file.

use std::path::{Path, PathBuf};

use keyward_config::LoadedConfig;
use keyward_config::home::Home;

/// What a sandboxed run asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    /// `--sandbox-profile`: a `[sandbox.profiles.NAME]` to add.
    pub profile: Option<String>,
    /// `--sandbox-allow-read`.
    pub read: Vec<PathBuf>,
    /// `--sandbox-allow-write`.
    pub write: Vec<PathBuf>,
    /// `--allow-port`: TCP ports reachable besides the proxy's.
    pub connect_ports: Vec<u16>,
    /// `--allow-bind`: TCP ports the program may listen on.
    pub bind_ports: Vec<u16>,
    /// Give the program a mount view (see [`keyward_sys::MountViewSpec`]):
    /// a private `/tmp` and `/dev/shm`, the keyward home, `/run/user` and
    /// `/var/tmp` hidden, other programs' sockets covered.
    pub mount_view: bool,
}

/// The rules for one sandboxed run.
#[derive(Debug)]
pub struct SandboxPlan {
    /// What Landlock is asked to enforce.
    pub rules: keyward_sys::SandboxRules,
    /// A private temporary directory made for this run (with a mount view,
    /// or when `/tmp` holds the keyward home), removed when the run ends.
    pub private_tmp: Option<PathBuf>,
    /// What the program gets as `TMPDIR`, when not the inherited one.
    pub tmpdir: Option<PathBuf>,
    /// The mount view, when asked for.
    pub mount_view: Option<keyward_sys::MountViewSpec>,
    /// What the user should know (printed on stderr).
    pub notes: Vec<String>,
}

/// Why a sandbox cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum SandboxPlanError {
    /// A named path would open the keyward home or the config file.
    #[error(
        "{what} {} {relation} {}; a sandboxed run never reaches keyward's own files",
        path.display(), protected.display()
    )]
    Protected {
        /// Where the path came from.
        what: String,
        /// The path.
        path: PathBuf,
        /// "is inside" or "contains".
        relation: &'static str,
        /// The keyward home or config file.
        protected: PathBuf,
    },
    /// A named path does not exist.
    #[error("{what} {}: {source}", path.display())]
    Path {
        /// Where the path came from.
        what: String,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--sandbox-profile` names no profile.
    #[error("no sandbox profile named {name:?} in {}; profiles are: {known}", config.display())]
    UnknownProfile {
        /// The name.
        name: String,
        /// The config file.
        config: PathBuf,
        /// The defined names.
        known: String,
    },
}

/// System directories a program reads and runs from, where they exist.
const SYSTEM_EXEC: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/nix",
];
/// System directories a program reads.
const SYSTEM_READ: &[&str] = &[
    "/etc",
    "/proc",
    "/sys",
    // The resolver's files, not its directory: systemd-resolved's varlink
    // socket there would answer lookups (and carry data out) beside the
    // proxy.
    "/run/systemd/resolve/stub-resolv.conf",
    "/run/systemd/resolve/resolv.conf",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
/// Devices and shared memory a program writes.
/// Devices one by one, never `/dev` as a whole: other terminals of the same
/// user (`/dev/pts/*`, where a passphrase may be typed) must stay out of
/// reach; inherited descriptors work without a rule.
const DEVICES_WRITE: &[&str] = &["/dev/null", "/dev/tty", "/dev/shm"];
/// Under the user's home: toolchains run from there.
const HOME_EXEC: &[&str] = &[
    ".rustup",
    ".cargo/bin",
    ".local/bin",
    ".pyenv",
    ".nvm",
    ".bun",
    ".deno",
];
/// Under the user's home: configuration tools read.
const HOME_READ: &[&str] = &[".gitconfig", ".config/git", ".local/lib"];
/// Under the user's home: caches tools write. Only the download caches of
/// cargo and Maven: `~/.cargo/bin`, `~/.cargo/config.toml`, `~/.cargo/env`
/// and `~/.m2/settings.xml` hold credentials or run later, outside the run.
const HOME_WRITE: &[&str] = &[
    ".cache",
    ".cargo/registry",
    ".cargo/git",
    ".npm",
    ".yarn/berry/cache",
    ".m2/repository",
    "go/pkg/mod",
];

/// Plans the sandbox of a run whose program starts in `cwd` and reaches
/// the proxy on `proxy_port`.
pub fn plan(
    home: &Home,
    config: &LoadedConfig,
    request: &SandboxRequest,
    cwd: &Path,
    proxy_port: u16,
) -> Result<SandboxPlan, SandboxPlanError> {
    let guard = Guard::new(home, &config.source.path);
    let user_home = std::env::var_os("HOME").map(PathBuf::from);
    let mut rules = keyward_sys::SandboxRules {
        filesystem: true,
        network: true,
        scope_abstract_unix: true,
        syscall_filter: true,
        connect_tcp: std::iter::once(proxy_port)
            .chain(request.connect_ports.iter().copied())
            .collect(),
        bind_tcp: request.bind_ports.clone(),
        ..Default::default()
    };
    let mut notes = Vec::new();

    // Built in: taken where present and harmless, skipped (said) otherwise.
    let mut builtin = |list: &mut Vec<PathBuf>, path: PathBuf| {
        if let Ok(path) = path.canonicalize() {
            match guard.check(&path) {
                Ok(()) => list.push(path),
                Err((relation, protected)) => notes.push(format!(
                    "{} {relation} {}: left out of the sandbox",
                    path.display(),
                    protected.display()
                )),
            }
        }
    };
    for dir in SYSTEM_EXEC {
        builtin(&mut rules.exec, dir.into());
    }
    for dir in SYSTEM_READ {
        builtin(&mut rules.read, dir.into());
    }
    for dev in DEVICES_WRITE {
        // With a mount view, /dev/shm is the run's own (below).
        if !(request.mount_view && *dev == SHARED_MEMORY) {
            builtin(&mut rules.write, dev.into());
        }
    }
    if let Some(user_home) = &user_home {
        for (list, names) in [
            (&mut rules.exec, HOME_EXEC),
            (&mut rules.read, HOME_READ),
            (&mut rules.write, HOME_WRITE),
        ] {
            for name in names {
                builtin(list, user_home.join(name));
            }
        }
    }
    // The trust bundle children are pointed at: public certificates only.
    rules.read.push(home.ca_dir().join("public"));

    // The working directory: a named path, so a clash is an error.
    rules
        .write
        .push(guard.named("the working directory", cwd, user_home.as_deref())?);

    // Temporary files: with a mount view, the run's own /tmp and /dev/shm;
    // else /tmp itself, or a private directory when /tmp holds the keyward
    // home.
    let tmp = std::env::temp_dir();
    let mut private_tmp = None;
    let mut tmpdir = None;
    let mut view = None;
    if request.mount_view {
        let tmp = tmp.canonicalize().unwrap_or(tmp);
        let dir =
            make_private_tmp(&tmp, &["tmp", "shm"]).map_err(|source| SandboxPlanError::Path {
                what: "the run's private temporary directory in".to_owned(),
                path: tmp.clone(),
                source,
            })?;
        let mut spec = keyward_sys::MountViewSpec::default();
        for (sub, target) in [
            ("tmp", Path::new("/tmp")),
            ("shm", Path::new(SHARED_MEMORY)),
        ] {
            if target.is_dir() {
                rules.write.push(dir.join(sub));
                spec.replace.push((dir.join(sub), target.to_owned()));
            }
        }
        tmpdir = Some(PathBuf::from("/tmp"));
        private_tmp = Some(dir);
        view = Some(spec);
    } else {
        match tmp.canonicalize() {
            Ok(tmp) if guard.check(&tmp).is_ok() => rules.write.push(tmp),
            Ok(tmp) => {
                let dir = make_private_tmp(&tmp, &[]).map_err(|source| SandboxPlanError::Path {
                    what: "the run's private temporary directory in".to_owned(),
                    path: tmp.clone(),
                    source,
                })?;
                notes.push(format!(
                    "{} holds keyward's files, so the program gets TMPDIR={}",
                    tmp.display(),
                    dir.display()
                ));
                rules.write.push(dir.clone());
                tmpdir = Some(dir.clone());
                private_tmp = Some(dir);
            }
            Err(_) => {}
        }
    }

    if let Some(name) = &request.profile {
        let profile = config.config.sandbox.profiles.get(name).ok_or_else(|| {
            SandboxPlanError::UnknownProfile {
                name: name.clone(),
                config: config.source.path.clone(),
                known: config
                    .config
                    .sandbox
                    .profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        for (list, paths, field) in [
            (&mut rules.read, &profile.read, "read"),
            (&mut rules.write, &profile.write, "write"),
            (&mut rules.exec, &profile.exec, "exec"),
        ] {
            for path in paths {
                let what = format!("sandbox.profiles.{name}.{field}:");
                list.push(guard.named(&what, path, user_home.as_deref())?);
            }
        }
    }
    for path in &request.read {
        let read = guard.named("--sandbox-allow-read", path, user_home.as_deref())?;
        rules.read.push(read);
    }
    for path in &request.write {
        let write = guard.named("--sandbox-allow-write", path, user_home.as_deref())?;
        rules.write.push(write);
    }
    if let Some(spec) = &mut view {
        plan_mount_view(
            spec,
            home,
            config,
            &rules,
            cwd,
            user_home.as_deref(),
            &mut notes,
        );
    }
    Ok(SandboxPlan {
        rules,
        private_tmp,
        tmpdir,
        mount_view: view,
        notes,
    })
}

/// `/dev/shm`: POSIX shared memory, private to the run with a mount view.
const SHARED_MEMORY: &str = "/dev/shm";

/// System directories a mount view hides whole (paths the run's rules
/// name inside them are shown again): `/run`, where services keep their
/// sockets (docker, dbus, systemd, every user's runtime directory under
/// `/run/user`) and recreate them at will, and the shared temporary
/// directory that outlives reboots.
const HIDDEN_SYSTEM_DIRS: &[&str] = &["/run", "/var/tmp"];

/// How deep other programs' named Unix sockets are looked for in the
/// user's home (`~/.gnupg`, agents, editors).
const SOCKET_ROOTS_DEPTH: usize = 4;
/// At most this many directory entries are looked at (start-up stays fast
/// in a huge home); sockets deeper or further are not covered.
const SOCKET_SCAN_LIMIT: usize = 20_000;

/// Fills the mount view of a sandboxed run: the keyward home, `/run` and
/// `/var/tmp` hidden, with only the public CA certificates, the admin
/// socket and the paths of the run's rules shown; the config file and
/// other programs' sockets in the user's home covered; the working
/// directory entered again in the view.
fn plan_mount_view(
    spec: &mut keyward_sys::MountViewSpec,
    home: &Home,
    config: &LoadedConfig,
    rules: &keyward_sys::SandboxRules,
    cwd: &Path,
    user_home: Option<&Path>,
    notes: &mut Vec<String>,
) {
    let canonical = |p: &Path| p.canonicalize().ok();
    let cwd = canonical(cwd).unwrap_or_else(|| cwd.to_owned());
    spec.chdir = Some(cwd.clone());
    if let Some(root) = canonical(home.root()) {
        spec.hide.push(root);
    }
    for dir in HIDDEN_SYSTEM_DIRS {
        if let Some(dir) = canonical(Path::new(dir)).filter(|d| d.is_dir()) {
            spec.hide.push(dir);
        }
    }
    // What the program needs of keyward's files, wherever they are: the
    // trust bundle its environment names, the admin socket (`keyward
    // eval`), and a system daemon's public directory.
    let socket = canonical(&home.socket_path());
    let keyward_files = [canonical(&home.ca_dir().join("public")), socket.clone()]
        .into_iter()
        .chain(std::iter::once(
            home.public_dir().and_then(|d| canonical(&d)),
        ))
        .flatten();
    // And the paths of its rules (`/run/systemd/resolve`, a working
    // directory under `/run/user`): shown as their rule says.
    let read_rules = rules.read.iter().chain(&rules.exec).cloned();
    let write_rules: Vec<PathBuf> = std::iter::once(cwd.clone())
        .chain(rules.write.iter().cloned())
        .collect();
    let inside_hidden =
        |p: &Path, hide: &[PathBuf]| hide.iter().any(|h| p.starts_with(h) && p != h);
    for path in keyward_files.chain(read_rules) {
        if inside_hidden(&path, &spec.hide) && !spec.show.contains(&path) {
            spec.show.push(path);
        }
    }
    for path in &write_rules {
        if inside_hidden(path, &spec.hide) && !spec.show_writable.contains(path) {
            spec.show_writable.push(path.clone());
        }
    }
    if let Some(config) = canonical(&config.source.path)
        && config.is_file()
        && !spec.hide.iter().any(|h| config.starts_with(h))
    {
        spec.cover.push(config);
    }
    let used: Vec<&PathBuf> = rules
        .read
        .iter()
        .chain(&rules.exec)
        .chain(&rules.write)
        .collect();
    // What the run uses inside its private /tmp's place (a working
    // directory in the host's /tmp) stays visible where it was.
    let private: Vec<PathBuf> = spec.replace.iter().map(|(s, _)| s.clone()).collect();
    for path in std::iter::once(&cwd).chain(used.iter().copied()) {
        let replaced = spec.replace.iter().any(|(_, t)| path.starts_with(t));
        let ours = private
            .iter()
            .any(|p| path.starts_with(p.parent().unwrap_or(p)));
        let hidden = spec.hide.iter().any(|h| path.starts_with(h));
        if replaced && !ours && !hidden && !spec.keep.contains(path) {
            spec.keep.push(path.clone());
        }
    }
    // Other programs' sockets in the user's home (agents, editors); the
    // directories the run may write are looked into apart (a run could
    // fill them to exhaust the look).
    let mut cover = |path: &Path| {
        let hidden = spec.hide.iter().any(|h| path.starts_with(h));
        let named = used.iter().any(|p| *p == path);
        if !hidden && !named && socket.as_deref() != Some(path) {
            spec.cover.push(path.to_owned());
        }
    };
    let mut exhausted = |root: &Path, budget: usize| {
        if budget == 0 {
            notes.push(format!(
                "{} has more than {SOCKET_SCAN_LIMIT} entries {SOCKET_ROOTS_DEPTH} levels deep: \
                 sockets beyond those looked at are not covered",
                root.display()
            ));
        }
    };
    if let Some(root) = user_home.and_then(canonical) {
        let skip: Vec<&PathBuf> = rules.write.iter().collect();
        let mut budget = SOCKET_SCAN_LIMIT;
        find_sockets(&root, SOCKET_ROOTS_DEPTH, &skip, &mut budget, &mut cover);
        exhausted(&root, budget);
    }
    // The directories the run may write, each with a look of its own:
    // filling one cannot hide the sockets of the rest (an ssh control
    // socket in ~/.cache is a logged-in ssh session).
    for dir in &rules.write {
        if private
            .iter()
            .any(|p| dir.starts_with(p.parent().unwrap_or(p)))
        {
            continue;
        }
        let mut budget = SOCKET_SCAN_LIMIT;
        find_sockets(dir, SOCKET_ROOTS_DEPTH, &[], &mut budget, &mut cover);
        exhausted(dir, budget);
    }
}

/// Calls `found` with every Unix socket beneath `dir` (not following
/// symbolic links), at most `depth` levels down, looking at no more than
/// `budget` entries in all.
fn find_sockets(
    dir: &Path,
    depth: usize,
    skip: &[&PathBuf],
    budget: &mut usize,
    found: &mut dyn FnMut(&Path),
) {
    use std::os::unix::fs::FileTypeExt;
    if skip.iter().any(|s| s.as_path() == dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_socket() {
            found(&entry.path());
        } else if kind.is_dir() && depth > 1 {
            find_sockets(&entry.path(), depth - 1, skip, budget, found);
        }
    }
}

/// Keeps the keyward home and the config file out of every rule.
struct Guard {
    protected: Vec<PathBuf>,
}

impl Guard {
    fn new(home: &Home, config_file: &Path) -> Self {
        let protected = [home.root(), config_file]
            .into_iter()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_owned()))
            .collect();
        Self { protected }
    }

    /// Whether `path` (canonical) is clear of keyward's files; else how it
    /// relates to which.
    fn check(&self, path: &Path) -> Result<(), (&'static str, PathBuf)> {
        for protected in &self.protected {
            if path.starts_with(protected) {
                return Err(("is inside", protected.clone()));
            }
            if protected.starts_with(path) {
                return Err(("contains", protected.clone()));
            }
        }
        Ok(())
    }

    /// A path the user named: `~/` expanded, it must exist and be clear.
    fn named(
        &self,
        what: &str,
        path: &Path,
        user_home: Option<&Path>,
    ) -> Result<PathBuf, SandboxPlanError> {
        let expanded = match (path.strip_prefix("~"), user_home) {
            (Ok(rest), Some(user_home)) => user_home.join(rest),
            _ => path.to_owned(),
        };
        let canonical = expanded
            .canonicalize()
            .map_err(|source| SandboxPlanError::Path {
                what: what.to_owned(),
                path: expanded.clone(),
                source,
            })?;
        self.check(&canonical)
            .map_err(|(relation, protected)| SandboxPlanError::Protected {
                what: what.to_owned(),
                path: canonical.clone(),
                relation,
                protected,
            })?;
        Ok(canonical)
    }
}

/// The name a run's private TMPDIR has.
const PRIVATE_TMP_PREFIX: &str = "keyward-run-";

/// Whether `dir` is a run's private TMPDIR as [`plan`] makes them: an
/// absolute `keyward-run-<12 hex>` directory, not a symbolic link. The
/// daemon removes only such a directory when a run ends.
pub fn is_private_tmp(dir: &Path) -> bool {
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(PRIVATE_TMP_PREFIX))
        .is_some_and(|hex| hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    named && dir.is_absolute() && std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
}

/// Removes a run's private temporary directory with everything the run
/// left in it, directories it made unreadable (`chmod 0`) and trees of any
/// depth included: coreutils `rm -rf --one-file-system` (then `chmod -R
/// u+rwx` and again), which walk without recursion and never follow a
/// symbolic link. Call it only with this process's privileges over a
/// directory of this process's user (the daemon leaves other users'
/// directories to their `keyward run`): a link or rename race in the tree
/// then touches nothing its owner could not touch anyway.
pub fn remove_private_tmp(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .arg("--")
            .arg(dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !run("rm", &["-rf", "--one-file-system"]) {
        run("chmod", &["-R", "u+rwx"]);
        run("rm", &["-rf", "--one-file-system"]);
    }
}

/// A new 0700 directory `keyward-run-<random>` in `tmp`, with the 0700
/// subdirectories `subdirs`.
fn make_private_tmp(tmp: &Path, subdirs: &[&str]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = tmp.join(format!(
        "{PRIVATE_TMP_PREFIX}{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    builder.create(&dir)?;
    for sub in subdirs {
        if let Err(e) = builder.create(dir.join(sub)) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_config::ConfigSource;

    fn loaded(home: &Home, text: &str) -> LoadedConfig {
        let path = home.default_config_path();
        std::fs::write(&path, text).unwrap();
        keyward_config::load(&ConfigSource {
            path,
            explicit: false,
        })
        .unwrap()
    }

    #[test]
    fn paths_touching_the_home_are_refused_with_what_and_why() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        std::fs::create_dir_all(home.root()).unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let config = loaded(&home, "");
        let request = |write: &Path| SandboxRequest {
            write: vec![write.to_owned()],
            ..Default::default()
        };
        for (path, relation) in [
            (home.root().join("vault"), "is inside"),
            (tmp.path().to_owned(), "contains"),
        ] {
            std::fs::create_dir_all(&path).unwrap();
            let err = plan(&home, &config, &request(&path), &work, 1)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--sandbox-allow-write") && err.contains(relation),
                "{err}"
            );
        }
        // A working directory that holds the home is refused too.
        let err = plan(&home, &config, &SandboxRequest::default(), tmp.path(), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the working directory") && err.contains("contains"),
            "{err}"
        );
        // A missing path says so.
        let err = plan(&home, &config, &request(&work.join("nope")), &work, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn profiles_add_paths_and_unknown_ones_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        std::fs::create_dir_all(home.root()).unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = loaded(
            &home,
            &format!(
                "[sandbox.profiles.ml]\nread = [{:?}]\n",
                data.display().to_string()
            ),
        );
        let with = |name: &str| SandboxRequest {
            profile: Some(name.to_owned()),
            ..Default::default()
        };
        let plan_ml = plan(&home, &config, &with("ml"), &data, 9).unwrap();
        assert!(plan_ml.rules.read.contains(&data.canonicalize().unwrap()));
        assert_eq!(plan_ml.rules.connect_tcp, vec![9]);
        let err = plan(&home, &config, &with("nope"), &data, 9)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nope\"") && err.contains("ml"), "{err}");
    }

    #[test]
    fn a_mount_view_hides_the_home_and_keeps_what_the_run_uses() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp_path = tmp.path().canonicalize().unwrap();
        let home = Home::at(tmp_path.join("home"));
        std::fs::create_dir_all(home.ca_dir().join("public")).unwrap();
        let work = tmp_path.join("work");
        std::fs::create_dir_all(&work).unwrap();
        // A config file outside the home is covered.
        let outside = tmp_path.join("elsewhere.toml");
        std::fs::write(&outside, "").unwrap();
        let config = keyward_config::load(&ConfigSource {
            path: outside.clone(),
            explicit: true,
        })
        .unwrap();
        let request = SandboxRequest {
            mount_view: true,
            ..Default::default()
        };
        let plan = plan(&home, &config, &request, &work, 1).unwrap();
        let spec = plan.mount_view.as_ref().unwrap();
        let private = plan.private_tmp.clone().unwrap();
        assert!(is_private_tmp(&private), "{private:?}");
        assert_eq!(plan.tmpdir.as_deref(), Some(Path::new("/tmp")));
        assert!(
            spec.replace
                .contains(&(private.join("tmp"), PathBuf::from("/tmp"))),
            "{spec:?}"
        );
        assert!(plan.rules.write.contains(&private.join("tmp")));
        assert!(
            !plan.rules.write.iter().any(|p| p == Path::new("/tmp")),
            "the host's /tmp is not writable: {:?}",
            plan.rules.write
        );
        assert!(spec.hide.contains(&home.root().to_owned()), "{spec:?}");
        assert!(
            spec.show.contains(&home.ca_dir().join("public")),
            "{spec:?}"
        );
        assert!(spec.cover.contains(&outside), "{spec:?}");
        if work.starts_with("/tmp") {
            assert!(spec.keep.contains(&work), "{spec:?}");
        }
        assert!(
            !spec.keep.iter().any(|k| k.starts_with(home.root())),
            "nothing of the home is kept writable: {spec:?}"
        );
        std::fs::remove_dir_all(private).unwrap();
    }

    #[test]
    fn a_private_tmp_of_any_depth_is_removed_without_following_links() {
        // (As a user whose own directory it is: see `remove_private_tmp`.)
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let private = make_private_tmp(tmp.path(), &["tmp"]).unwrap();
        // Outside: a directory a link in the tree points at.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("kept"), "x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, private.join("tmp/link")).unwrap();
        // 20,000 levels deep (a recursive removal overflowed a thread's
        // stack; deeper than PATH_MAX, so made by walking down), the top
        // directory unreadable.
        let made = std::process::Command::new("python3")
            .args([
                "-c",
                "import os, sys\nos.chdir(sys.argv[1])\n\
                 for _ in range(20000): os.mkdir('d'); os.chdir('d')",
            ])
            .arg(private.join("tmp"))
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::set_permissions(private.join("tmp/d"), std::fs::Permissions::from_mode(0o0))
            .unwrap();
        remove_private_tmp(&private);
        assert!(!private.exists(), "removed");
        assert!(outside.join("kept").exists(), "the link was not followed");
        assert_eq!(
            std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o755,
            "nothing outside changed mode"
        );
    }
}
