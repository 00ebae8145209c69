//! The mount view of a sandboxed run: the program starts in a mount
//! namespace of its own (in a user namespace when this process is not
//! root) where what it must not reach is not refused but absent:
//!
//! - `/tmp` and `/dev/shm` are the run's private directories (bound over
//!   them), so other programs' sockets and files there do not exist;
//! - hidden directories (the keyward home, `/run/user`, `/var/tmp`) are
//!   empty read-only tmpfs mounts, with only what a program needs shown
//!   again read-only (the public CA certificates, the admin socket): a
//!   `chmod` of the home, the vault or its key meets a read-only file
//!   system instead of the real files;
//! - covered files (named Unix sockets of other programs, the config file)
//!   are `/dev/null`, read-only.
//!
//! Everything is computed before the fork ([`MountView::new`]); between
//! fork and exec the child only runs the steps with async-signal-safe
//! syscalls (`unshare`, `mount`, `open`, `mkdir`, `fstatvfs`, `close`), after
//! the network namespace and before Landlock and the seccomp filter (which
//! refuses `mount`). Mounts never propagate back to the host: the whole
//! tree is made a slave first.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::netns::{IdMaps, unshare_mapped};

/// What a run's mount view does, as paths (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct MountViewSpec {
    /// `(source, target)`: the directory `source` is bound over the
    /// existing directory `target`, writable (the private `/tmp`).
    pub replace: Vec<(PathBuf, PathBuf)>,
    /// Existing paths inside a replaced directory that stay where they
    /// are, as they are (the working directory in `/tmp`): bound again at
    /// the same place once the directory is replaced.
    pub keep: Vec<PathBuf>,
    /// Existing directories replaced by an empty read-only tmpfs.
    pub hide: Vec<PathBuf>,
    /// Paths inside hidden directories shown again, read-only, at the same
    /// place (directories, files or sockets).
    pub show: Vec<PathBuf>,
    /// Existing paths inside hidden directories shown again, writable
    /// (a path the run may write that lies in a hidden directory).
    pub show_writable: Vec<PathBuf>,
    /// Existing files (not directories) covered by a read-only `/dev/null`.
    pub cover: Vec<PathBuf>,
    /// The program's working directory, entered again once the view is
    /// made: the one it inherited is the host's directory, whose `..`
    /// leads past the view.
    pub chdir: Option<PathBuf>,
}

/// One step the child runs.
#[derive(Debug)]
enum Step {
    /// Open `path` with `O_PATH` into descriptor slot `slot` (in the new
    /// namespace: a bind source must belong to it).
    Open { path: CString, slot: usize },
    /// `mkdir(path, 0755)`; an existing entry is fine.
    MakeDir(CString),
    /// Create an empty file at `path` (a mount point for a non-directory);
    /// an existing entry is fine.
    MakeFile(CString),
    /// An empty tmpfs at `path`, writable until sealed.
    Tmpfs(CString),
    /// Bind what slot `slot` holds over `target`; a vanished target (a
    /// socket removed meanwhile) is skipped when `optional`.
    Bind {
        slot: usize,
        target: CString,
        optional: bool,
    },
    /// Make the bind at `target` read-only, keeping the flags the kernel
    /// locks (nosuid, nodev, noexec, atime) from slot `slot`'s mount; a
    /// vanished target is skipped when `optional`.
    ReadOnly {
        slot: usize,
        target: CString,
        optional: bool,
    },
    /// Make the tmpfs at `path` read-only.
    Seal(CString),
    /// `chdir(path)`, in the view.
    Chdir(CString),
}

/// A mount view ready to be made in a spawned child.
#[derive(Debug)]
pub struct MountView {
    steps: Vec<Step>,
    slots: usize,
    maps: IdMaps,
}

/// Why a mount view cannot be planned.
#[derive(Debug, thiserror::Error)]
#[error("mount view: {path}: {why}")]
pub struct MountViewError {
    path: String,
    why: &'static str,
}

fn c_path(path: &Path) -> Result<CString, MountViewError> {
    if !path.is_absolute() {
        return Err(MountViewError {
            path: path.display().to_string(),
            why: "not an absolute path",
        });
    }
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountViewError {
        path: path.display().to_string(),
        why: "contains a NUL byte",
    })
}

/// The steps that make `path` exist as a mount point: its parent
/// directories (existing ones are fine), then a directory or an empty file.
fn push_mount_point(
    steps: &mut Vec<Step>,
    path: &Path,
    is_dir: bool,
) -> Result<(), MountViewError> {
    let all = prefixes(path);
    for prefix in &all[..all.len().saturating_sub(1)] {
        steps.push(Step::MakeDir(c_path(prefix)?));
    }
    let target = c_path(path)?;
    steps.push(if is_dir {
        Step::MakeDir(target)
    } else {
        Step::MakeFile(target)
    });
    Ok(())
}

/// Every directory from `/` down to `path` itself, outermost first.
fn prefixes(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = PathBuf::new();
    for component in path.components() {
        current.push(component);
        if !matches!(component, Component::RootDir) {
            out.push(current.clone());
        }
    }
    out
}

impl MountView {
    /// Plans the steps of `spec`. Hidden directories inside other hidden
    /// directories are dropped (the outer one hides them); shown paths
    /// outside every hidden directory are ignored (nothing hides them).
    pub fn new(spec: &MountViewSpec) -> Result<Self, MountViewError> {
        let mut steps = Vec::new();
        let mut slots = 0;
        let mut open = |steps: &mut Vec<Step>, path: &Path| -> Result<usize, MountViewError> {
            steps.push(Step::Open {
                path: c_path(path)?,
                slot: slots,
            });
            slots += 1;
            Ok(slots - 1)
        };
        // Sources first, while every path still leads where it did.
        let replace: Vec<(usize, &PathBuf)> = spec
            .replace
            .iter()
            .map(|(source, target)| Ok((open(&mut steps, source)?, target)))
            .collect::<Result<_, MountViewError>>()?;
        let mut kept: Vec<&PathBuf> = spec
            .keep
            .iter()
            .filter(|k| {
                spec.replace
                    .iter()
                    .any(|(_, t)| k.starts_with(t) && *k != t)
            })
            .filter(|k| !spec.keep.iter().any(|o| o != *k && k.starts_with(o)))
            .collect();
        kept.sort_by_key(|k| (k.components().count(), k.as_os_str().to_owned()));
        kept.dedup();
        let keep: Vec<(usize, &PathBuf, bool)> = kept
            .into_iter()
            .map(|k| Ok((open(&mut steps, k)?, k, k.is_dir())))
            .collect::<Result<_, MountViewError>>()?;
        let mut hide: Vec<&PathBuf> = spec
            .hide
            .iter()
            .filter(|h| !spec.hide.iter().any(|o| o != *h && h.starts_with(o)))
            .collect();
        hide.sort_by_key(|h| (h.components().count(), h.as_os_str().to_owned()));
        hide.dedup();
        let show: Vec<(usize, &PathBuf, bool, bool)> = spec
            .show
            .iter()
            .map(|s| (s, false))
            .chain(spec.show_writable.iter().map(|s| (s, true)))
            .filter(|(s, _)| hide.iter().any(|h| s.starts_with(h) && s != h))
            .map(|(s, writable)| Ok((open(&mut steps, s)?, s, s.is_dir(), writable)))
            .collect::<Result<_, MountViewError>>()?;
        let null = if spec.cover.is_empty() {
            None
        } else {
            Some(open(&mut steps, Path::new("/dev/null"))?)
        };

        for (slot, target) in replace {
            steps.push(Step::Bind {
                slot,
                target: c_path(target)?,
                optional: false,
            });
        }
        for (slot, path, is_dir) in keep {
            push_mount_point(&mut steps, path, is_dir)?;
            steps.push(Step::Bind {
                slot,
                target: c_path(path)?,
                optional: false,
            });
        }
        for dir in hide {
            // A hidden directory may have vanished under a replaced one
            // (the home in /tmp): its place is made again there.
            for prefix in prefixes(dir) {
                steps.push(Step::MakeDir(c_path(&prefix)?));
            }
            steps.push(Step::Tmpfs(c_path(dir)?));
            for (slot, path, is_dir, writable) in show.iter().filter(|s| s.1.starts_with(dir)) {
                push_mount_point(&mut steps, path, *is_dir)?;
                let target = c_path(path)?;
                steps.push(Step::Bind {
                    slot: *slot,
                    target: target.clone(),
                    optional: false,
                });
                if !writable {
                    steps.push(Step::ReadOnly {
                        slot: *slot,
                        target,
                        optional: false,
                    });
                }
            }
            steps.push(Step::Seal(c_path(dir)?));
        }
        if let Some(null) = null {
            for file in &spec.cover {
                let target = c_path(file)?;
                steps.push(Step::Bind {
                    slot: null,
                    target: target.clone(),
                    optional: true,
                });
                steps.push(Step::ReadOnly {
                    slot: null,
                    target,
                    optional: true,
                });
            }
        }
        if let Some(cwd) = &spec.chdir {
            steps.push(Step::Chdir(c_path(cwd)?));
        }
        Ok(Self {
            steps,
            slots,
            maps: IdMaps::current(),
        })
    }

    /// In the spawned child, between fork and exec, after the network
    /// namespace (`in_user_namespace`: it made a user namespace) and before
    /// Landlock and the seccomp filter. Async-signal-safe: no allocation.
    pub(crate) fn enter_in_child(&self, in_user_namespace: bool) -> io::Result<()> {
        // SAFETY: called only between fork and exec.
        unsafe { enter_mount_namespace(in_user_namespace, &self.maps) }?;
        let mut fds = [-1; MAX_SLOTS];
        let result = if self.slots > MAX_SLOTS {
            Err(io::Error::from_raw_os_error(libc::E2BIG))
        } else {
            self.steps.iter().try_for_each(|step| run(step, &mut fds))
        };
        for fd in fds.iter().take(self.slots) {
            if *fd >= 0 {
                // SAFETY: closes a descriptor a step opened.
                unsafe { libc::close(*fd) };
            }
        }
        result
    }
}

/// Descriptors open at once while the view is made (one per replaced or
/// shown path, plus `/dev/null`).
const MAX_SLOTS: usize = 32;

/// Flags the kernel locks on a mount seen from a user namespace, as
/// `statfs` reports them and as `mount` takes them: a remount that drops
/// one fails with EPERM.
const LOCKED_FLAGS: [(libc::c_ulong, libc::c_ulong); 6] = [
    (libc::ST_NOSUID, libc::MS_NOSUID),
    (libc::ST_NODEV, libc::MS_NODEV),
    (libc::ST_NOEXEC, libc::MS_NOEXEC),
    (libc::ST_NOATIME, libc::MS_NOATIME),
    (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
    (libc::ST_RELATIME, libc::MS_RELATIME),
];

/// A new mount namespace (with a user namespace unless root or already in
/// one), every mount in it a slave of the host's so nothing done here
/// propagates back.
///
/// # Safety
/// Only between fork and exec (or in a forked child that exits).
unsafe fn enter_mount_namespace(in_user_namespace: bool, maps: &IdMaps) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // A System V IPC namespace too: shared memory segments, semaphores
    // and message queues of the user's other programs are out of reach
    // (Landlock does not see them).
    let flags = if root || in_user_namespace {
        libc::CLONE_NEWNS | libc::CLONE_NEWIPC
    } else {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC
    };
    // SAFETY: as this function's own contract.
    unsafe { unshare_mapped(flags, maps) }.map_err(|(_, e)| e)?;
    mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)
}

/// `mount(2)` with optional strings. Async-signal-safe.
fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings or null, valid for the call.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `/proc/self/fd/<fd>` written into `buf`, NUL-terminated, without
/// allocating.
fn fd_path(fd: i32, buf: &mut [u8; 32]) -> &std::ffi::CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    std::ffi::CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/")
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Runs one step. Async-signal-safe.
fn run(step: &Step, fds: &mut [i32; MAX_SLOTS]) -> io::Result<()> {
    match step {
        Step::Open { path, slot } => {
            // SAFETY: a NUL-terminated path; the descriptor is kept in
            // `fds` and closed by the caller.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(last_error());
            }
            fds[*slot] = fd;
        }
        Step::MakeDir(path) => {
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mkdir(path.as_ptr(), 0o755) } != 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(last_error());
            }
        }
        Step::MakeFile(path) => {
            // SAFETY: a NUL-terminated path; the descriptor is closed at
            // once.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: closes the descriptor opened above.
                unsafe { libc::close(fd) };
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                return Err(last_error());
            }
        }
        Step::Tmpfs(path) => mount(
            Some(c"keyward"),
            path,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"size=64k,nr_inodes=256,mode=0755"),
        )?,
        Step::Bind {
            slot,
            target,
            optional,
        } => {
            let mut buf = [0u8; 32];
            let source = fd_path(fds[*slot], &mut buf);
            match mount(Some(source), target, None, libc::MS_BIND, None) {
                Err(e) if *optional && e.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
        }
        Step::ReadOnly {
            slot,
            target,
            optional,
        } => {
            // SAFETY: statvfs is plain data the kernel fills.
            let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a live descriptor and a buffer of the right size;
            // glibc's fstatvfs is one fstatfs(2) when the kernel reports
            // mount flags (Linux 2.6.36+).
            if unsafe { libc::fstatvfs(fds[*slot], &mut stat) } != 0 {
                return Err(last_error());
            }
            let reported = stat.f_flag as libc::c_ulong;
            let locked = LOCKED_FLAGS
                .iter()
                .filter(|(st, _)| reported & st != 0)
                .fold(0, |acc, (_, ms)| acc | ms);
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
            match mount(None, target, None, flags, None) {
                Err(e) if *optional && e.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
        }
        Step::Chdir(path) => {
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::chdir(path.as_ptr()) } != 0 {
                return Err(last_error());
            }
        }
        Step::Seal(path) => mount(
            None,
            path,
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?,
    }
    Ok(())
}

/// Tries, in a forked child that exits at once, what a mount view needs
/// (a mount namespace, in a user namespace unless root, a tmpfs mounted
/// and made read-only), so a kernel that forbids it is known before
/// anything starts.
pub fn probe_mount_view() -> Result<(), crate::NamespaceUnavailable> {
    let maps = IdMaps::current();
    let step = || -> io::Result<()> {
        // SAFETY: in the forked probe child.
        unsafe { enter_mount_namespace(false, &maps) }?;
        run(&Step::Tmpfs(CString::from(c"/tmp")), &mut [-1; MAX_SLOTS])?;
        run(&Step::Seal(CString::from(c"/tmp")), &mut [-1; MAX_SLOTS])
    };
    crate::netns::probe_in_fork(&step).map_err(|source| {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        crate::NamespaceUnavailable::new(
            if root {
                "cannot make a mount namespace (unshare CLONE_NEWNS)"
            } else {
                "cannot make an unprivileged user and mount namespace \
                 (unshare CLONE_NEWUSER|CLONE_NEWNS)"
            },
            source,
            crate::netns::sysctl_hint(root),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        assert_eq!(fd_path(0, &mut buf).to_str().unwrap(), "/proc/self/fd/0");
        assert_eq!(
            fd_path(1234567, &mut buf).to_str().unwrap(),
            "/proc/self/fd/1234567"
        );
    }

    #[test]
    fn nested_hidden_directories_and_unhidden_shows_are_dropped() {
        let spec = MountViewSpec {
            hide: vec!["/a".into(), "/a/b".into()],
            show: vec!["/a/b/c".into(), "/elsewhere".into()],
            ..Default::default()
        };
        let view = MountView::new(&spec).unwrap();
        let tmpfs = view
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Tmpfs(_)))
            .count();
        assert_eq!(tmpfs, 1, "{view:?}");
        assert_eq!(view.slots, 1, "only /a/b/c is shown: {view:?}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let spec = MountViewSpec {
            hide: vec!["relative".into()],
            ..Default::default()
        };
        assert!(MountView::new(&spec).is_err());
    }
}
