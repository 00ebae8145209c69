//! Landlock glue for `keyward run`: a ruleset built in the parent (where
//! allocating is safe) and applied in the child between fork and exec with
//! two async-signal-safe syscalls.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::mount_view::MountView;
use crate::netns::{NamespaceKind, PrivateNetwork};
use crate::syscall_filter::{
    FilterError, SyscallFilter, install, prepare_run_filter, prepare_syscall_filter,
};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

/// What a sandboxed program may do. Paths must exist.
#[derive(Debug, Clone, Default)]
pub struct SandboxRules {
    /// Confine the filesystem: only the paths below are reachable.
    pub filesystem: bool,
    /// Readable (files read, directories listed).
    pub read: Vec<PathBuf>,
    /// Readable and executable.
    pub exec: Vec<PathBuf>,
    /// Readable, executable and writable (create, remove, truncate, ...).
    pub write: Vec<PathBuf>,
    /// Confine TCP: connect only to `connect_tcp`, bind only `bind_tcp`.
    pub network: bool,
    /// Ports TCP connections may go to (any address).
    pub connect_tcp: Vec<u16>,
    /// Ports that may be bound.
    pub bind_tcp: Vec<u16>,
    /// Keep the program from connecting to abstract Unix sockets made
    /// outside its sandbox.
    pub scope_abstract_unix: bool,
    /// Install the seccomp syscall filter (see [`crate::FILTERED_SYSCALLS`]).
    pub syscall_filter: bool,
    /// Without `syscall_filter`: install the small filter every run gets
    /// (no `clone3`, no changing other processes' limits; see
    /// [`crate::prepare_run_filter`]) where the kernel can.
    pub run_filter: bool,
    /// Without `filesystem`: paths the program may not write or make
    /// directories beneath, everything else staying writable (the cgroup2
    /// mounts, so that a run's processes cannot move themselves out of
    /// their run's cgroup or move other processes in).
    pub no_write: Vec<PathBuf>,
}

/// A ruleset ready to be applied to a child, and what it enforces on this
/// kernel.
#[derive(Debug)]
pub struct PreparedSandbox {
    fd: Option<OwnedFd>,
    /// The kernel's Landlock ABI version (0: no Landlock).
    pub abi: i32,
    /// What is enforced, in the order `fs`, `tcp`, `signals`, `abstract-unix`.
    pub enforced: Vec<&'static str>,
    /// What was asked for but this kernel cannot enforce.
    pub missing: Vec<&'static str>,
    /// The seccomp filter, when asked for and available.
    filter: Option<SyscallFilter>,
    /// Why the filter was asked for but cannot be installed here.
    pub filter_unavailable: Option<String>,
    /// The private network namespace the child makes first, if any.
    network: Option<PrivateNetwork>,
    /// The mount view the child makes next, if any.
    mount_view: Option<MountView>,
    /// Drop every capability and close inherited descriptors (a sandboxed
    /// run): the highest capability number this kernel knows.
    isolate: Option<u32>,
}

impl PreparedSandbox {
    /// Whether the seccomp syscall filter will be installed.
    pub fn filters_syscalls(&self) -> bool {
        self.filter.is_some()
    }

    /// Starts the child in `network`, a private network namespace made
    /// before anything else confines it (the seccomp filter refuses
    /// `unshare`).
    pub fn set_private_network(&mut self, network: PrivateNetwork) {
        self.network = Some(network);
    }

    /// Whether the child starts in a private network namespace.
    pub fn has_private_network(&self) -> bool {
        self.network.is_some()
    }

    /// Starts the child in `view`, a mount namespace made after the
    /// network namespace and before Landlock and the seccomp filter.
    pub fn set_mount_view(&mut self, view: MountView) {
        self.mount_view = Some(view);
    }

    /// The child keeps no capability (as root: none of root's; in a user
    /// namespace: none of the namespace's) and no descriptor it inherited
    /// but standard input, output and error (and what is placed after this
    /// hook, such as the broker's fd 3): a directory or socket descriptor
    /// of the caller's would lead past the mount view.
    pub fn isolate(&mut self) {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        self.isolate = Some(last);
    }
}

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A path of the rules cannot be opened.
    #[error("sandbox path {}: {source}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The kernel refused the ruleset.
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(String),
    /// The syscall filter's rules did not compile (a bug in keyward).
    #[error("cannot build the seccomp syscall filter: {0}")]
    Filter(String),
}

/// The Landlock ABI version this kernel offers; 0 when Landlock is absent
/// or disabled.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0, this flag only asks for the
    // version number; no memory is read or written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(rc).unwrap_or(0).max(0)
}

/// Builds the ruleset for `rules`; signals are always scoped to the
/// sandbox where the kernel can (ABI 6+).
pub fn prepare_sandbox(rules: &SandboxRules) -> Result<PreparedSandbox, SandboxError> {
    let raw_abi = landlock_abi();
    let abi = ABI::from(raw_abi);
    let mut enforced = Vec::new();
    let mut missing = Vec::new();
    let mut note = |on: bool, wanted: bool, name: &'static str| {
        if on {
            enforced.push(name);
        } else if wanted {
            missing.push(name);
        }
    };
    let fs = rules.filesystem && raw_abi >= 1;
    let fenced = !rules.filesystem && !rules.no_write.is_empty() && raw_abi >= 1;
    let net = rules.network && raw_abi >= 4;
    let scopes = raw_abi >= 6;
    note(fs, rules.filesystem, "fs");
    note(
        fenced,
        !rules.filesystem && !rules.no_write.is_empty(),
        "cgroups",
    );
    note(net, rules.network, "tcp");
    note(scopes, true, "signals");
    note(
        scopes && rules.scope_abstract_unix,
        rules.scope_abstract_unix,
        "abstract-unix",
    );
    let (filter, filter_unavailable) = if rules.syscall_filter {
        match prepare_syscall_filter() {
            Ok(filter) => (Some(filter), None),
            Err(FilterError::Build(e)) => return Err(SandboxError::Filter(e)),
            Err(e) => (None, Some(e.to_string())),
        }
    } else if rules.run_filter {
        match prepare_run_filter() {
            Ok(filter) => {
                enforced.push("seccomp");
                (Some(filter), None)
            }
            Err(FilterError::Build(e)) => return Err(SandboxError::Filter(e)),
            Err(_) => (None, None),
        }
    } else {
        (None, None)
    };
    if !(fs || fenced || net || scopes) {
        return Ok(PreparedSandbox {
            fd: None,
            abi: raw_abi,
            enforced,
            missing,
            filter,
            filter_unavailable,
            network: None,
            mount_view: None,
            isolate: None,
        });
    }
    let fail = |e: landlock::RulesetError| SandboxError::Ruleset(e.to_string());
    let mut ruleset = Ruleset::default();
    if fs {
        ruleset = ruleset
            .handle_access(AccessFs::from_all(abi))
            .map_err(fail)?;
    }
    let fence_access = AccessFs::WriteFile | AccessFs::MakeDir;
    if fenced {
        ruleset = ruleset.handle_access(fence_access).map_err(fail)?;
    }
    if net {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(fail)?;
    }
    if scopes {
        let mut scope: BitFlags<Scope> = Scope::Signal.into();
        if rules.scope_abstract_unix {
            scope |= Scope::AbstractUnixSocket;
        }
        ruleset = ruleset.scope(scope).map_err(fail)?;
    }
    let mut created = ruleset.create().map_err(fail)?;
    if fs {
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        // Writable paths get every right but making device nodes: a block
        // device of the disk in the working directory would read
        // everything (as root, or with CAP_MKNOD).
        let write = AccessFs::from_all(abi) & !(AccessFs::MakeBlock | AccessFs::MakeChar);
        let grants = [
            (&rules.read, read),
            (&rules.exec, read | AccessFs::Execute),
            (&rules.write, write),
        ];
        for (paths, access) in grants {
            for path in paths {
                created = created
                    .add_rule(path_rule(path, access, abi)?)
                    .map_err(fail)?;
            }
        }
    }
    if fenced {
        for path in everything_but(&rules.no_write) {
            // An entry that vanished meanwhile needs no rule.
            if let Ok(rule) = path_rule(&path, fence_access, abi) {
                created = created.add_rule(rule).map_err(fail)?;
            }
        }
    }
    if net {
        for port in &rules.connect_tcp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(fail)?;
        }
        for port in &rules.bind_tcp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::BindTcp))
                .map_err(fail)?;
        }
    }
    Ok(PreparedSandbox {
        fd: created.into(),
        abi: raw_abi,
        enforced,
        missing,
        filter,
        filter_unavailable,
        network: None,
        mount_view: None,
        isolate: None,
    })
}

/// Where cgroup file systems (v1 and v2) are mounted, from
/// `/proc/self/mountinfo`: what a run's processes may not write.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The paths whose rules cover the whole file system except `excluded`:
/// along the way from `/` to each excluded path, every sibling entry (a
/// rule on a directory covers everything beneath it, other mounts
/// included). Entries made later directly in one of those ancestors are
/// not covered (they are rare: `/`, `/sys`, `/sys/fs` and the like).
fn everything_but(excluded: &[PathBuf]) -> Vec<PathBuf> {
    use std::collections::BTreeSet;
    let mut ancestors: BTreeSet<PathBuf> = BTreeSet::new();
    for path in excluded {
        let mut current = path.as_path();
        while let Some(parent) = current.parent() {
            ancestors.insert(parent.to_path_buf());
            current = parent;
        }
    }
    let excluded: BTreeSet<&PathBuf> = excluded.iter().collect();
    let mut out = Vec::new();
    for dir in &ancestors {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !ancestors.contains(&path) && !excluded.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// A rule for `path`, with only the rights that apply to a file when it is
/// not a directory (the kernel refuses directory rights on files).
fn path_rule(
    path: &PathBuf,
    access: BitFlags<AccessFs>,
    abi: ABI,
) -> Result<PathBeneath<PathFd>, SandboxError> {
    let err = |source| SandboxError::Path {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(abi)
    };
    let fd = PathFd::new(path).map_err(|e| err(io::Error::other(e.to_string())))?;
    Ok(PathBeneath::new(fd, access))
}

/// Applies `sandbox` to the spawned child just before it executes the
/// program, in this order, in one hook: the private network namespace (if
/// set; `unshare` must come before the filter refuses it), then the mount
/// view (before Landlock, which refuses mounts), then
/// `PR_SET_NO_NEW_PRIVS`, then `landlock_restrict_self`, then the seccomp
/// filter. A child the kernel refuses to restrict does not run at all.
pub fn sandbox_on_spawn(cmd: &mut Command, sandbox: PreparedSandbox) {
    let PreparedSandbox {
        fd,
        filter,
        network,
        mount_view,
        isolate,
        ..
    } = sandbox;
    if fd.is_none()
        && filter.is_none()
        && network.is_none()
        && mount_view.is_none()
        && isolate.is_none()
    {
        return;
    }
    let in_user_namespace = network
        .as_ref()
        .is_some_and(|n| n.kind() == NamespaceKind::UserAndNetwork);
    // SAFETY: unshare, open/write/close, socket calls, sendmsg, prctl, the
    // raw landlock syscall and seccomp are async-signal-safe, as required
    // between fork and exec; the closure only reads data prepared before
    // the fork (descriptors it owns, closed on exec by O_CLOEXEC, the ID
    // map lines and the filter programs).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(network) = &network {
                network.enter_in_child()?;
            }
            if let Some(view) = &mount_view {
                view.enter_in_child(in_user_namespace)?;
            }
            if isolate.is_some() {
                close_inherited_descriptors();
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = &fd
                && libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(last) = isolate {
                drop_capabilities(last)?;
            }
            if let Some(filter) = &filter {
                install(filter)?;
            }
            Ok(())
        });
    }
}

/// Marks every descriptor from 3 up close-on-exec. Async-signal-safe.
fn close_inherited_descriptors() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's
    // descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Before Linux 5.11: one by one, up to the descriptor limit.
        // SAFETY: sysconf and fcntl take integers only.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(3, 1 << 16) as i32;
        for fd in 3..max {
            // SAFETY: as above; an unused number fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// `capset(2)`'s header and data, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding, ambient, effective, permitted and inheritable
/// capability sets: the program keeps none, and since the bounding set is
/// empty, executing anything (even as root, even a file with
/// capabilities) grants none. Async-signal-safe.
fn drop_capabilities(last: u32) -> io::Result<()> {
    for cap in 0..=last {
        // SAFETY: prctl takes integers only; a number this kernel does
        // not know fails with EINVAL, which changes nothing.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            // Without CAP_SETPCAP (a user outside any user namespace) the
            // bounding set cannot shrink, and need not: with no_new_privs
            // set, executing a file with capabilities grants none, and a
            // user who is not root gets none otherwise.
            // SAFETY: geteuid cannot fail.
            let unprivileged = unsafe { libc::geteuid() } != 0;
            match e.raw_os_error() {
                Some(libc::EINVAL) => {}
                Some(libc::EPERM) if unprivileged => break,
                _ => return Err(e),
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a header and two data words of the layout capset(2) reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(rules: &SandboxRules, script: &str) -> (bool, String) {
        let sandbox = prepare_sandbox(rules).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script])
            .stdout(std::process::Stdio::piped());
        sandbox_on_spawn(&mut cmd, sandbox);
        let mut child = cmd.spawn().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (child.wait().unwrap().success(), out)
    }

    #[test]
    fn files_outside_the_rules_cannot_be_read_or_written() {
        if landlock_abi() < 1 {
            eprintln!("no Landlock on this kernel; skipped");
            return;
        }
        let allowed = tempfile::tempdir().unwrap();
        let secret = tempfile::tempdir().unwrap();
        let (allowed, secret) = (allowed.path(), secret.path());
        std::fs::write(secret.join("key"), "s3cret").unwrap();
        let rules = SandboxRules {
            filesystem: true,
            exec: ["/usr", "/bin", "/lib", "/lib64", "/etc"]
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect(),
            write: vec![allowed.to_owned()],
            ..Default::default()
        };
        let script = format!(
            "echo ok > {a}/f && cat {a}/f; cat {s}/key; echo x > {s}/new; ls {s}",
            a = allowed.display(),
            s = secret.display()
        );
        let (_, out) = run(&rules, &script);
        assert_eq!(out.trim(), "ok", "only the allowed dir was usable");
        assert!(!secret.join("new").exists());
    }

    #[test]
    fn the_abi_is_reported_with_what_it_enforces() {
        let sandbox = prepare_sandbox(&SandboxRules {
            filesystem: true,
            network: true,
            ..Default::default()
        })
        .unwrap();
        let abi = landlock_abi();
        assert_eq!(sandbox.abi, abi);
        assert_eq!(sandbox.enforced.contains(&"fs"), abi >= 1);
        assert_eq!(sandbox.enforced.contains(&"tcp"), abi >= 4);
        assert_eq!(sandbox.enforced.contains(&"signals"), abi >= 6);
        assert_eq!(sandbox.missing.contains(&"tcp"), abi < 4);
    }
}
