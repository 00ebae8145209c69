//! Keeping a run's processes inside their run: the wrapper as child
//! subreaper (orphans come back to it instead of pid 1), ending what a
//! program left behind, and telling whether the process on the other end of
//! a socket is still the one that connected.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): every
/// orphaned descendant (double fork, `setsid -f`, a parent that exits) is
/// reparented to it instead of to pid 1, so it stays a descendant.
pub fn become_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes this process non-dumpable (`PR_SET_DUMPABLE=0`): no core file, no
/// same-uid ptrace, no `/proc/<pid>/mem` or `environ` for other processes.
pub fn make_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes only integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the spawned child receive SIGKILL when the thread that spawned it
/// exits (`PR_SET_PDEATHSIG`), so a program does not outlive its wrapper.
pub fn kill_with_parent_on_spawn(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as required between fork and
    // exec, and the closure touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The direct children of this process, whichever of its threads they
/// belong to (zombies included), read from `/proc/self/task/*/children`.
/// An error when `/proc` cannot be read (callers must not take that for
/// "no children").
pub fn own_children() -> io::Result<Vec<u32>> {
    let mut children = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let list = match std::fs::read_to_string(task?.path().join("children")) {
            Ok(list) => list,
            // A thread that exited meanwhile has no children to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children.sort_unstable();
    children.dedup();
    Ok(children)
}

/// Whether this process has any child at all, exited or not: asked of the
/// kernel (`waitid` with `WNOWAIT`), so it works without a free descriptor.
pub fn has_children() -> bool {
    // SAFETY: waitid writes only into `info`, a zeroed siginfo_t.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    !(rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// Reaps every exited child (`waitpid(-1, WNOHANG)`); only for use once no
/// other waiter expects a child's status.
pub fn reap_any_exited() {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG; `status` is a valid writable int.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Reaps the children of this process that have exited, except `keep`
/// (whose status its own waiter collects). Returns how many were reaped.
pub fn reap_exited_children(keep: Option<u32>) -> usize {
    let mut reaped = 0;
    for pid in own_children().unwrap_or_default() {
        if Some(pid) == keep {
            continue;
        }
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            continue;
        };
        let mut status = 0;
        // SAFETY: waitpid on one child pid with WNOHANG; `status` is a valid
        // writable int.
        if unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) } == raw {
            reaped += 1;
        }
    }
    reaped
}

/// A pidfd for the process on the other end of a connected Unix socket,
/// taken when it connected (`SO_PEERPIDFD`, Linux 6.5+): unlike the pid, it
/// cannot come to mean another process after that one exits. `None` where
/// the kernel does not offer it.
pub fn peer_pidfd(socket: &impl AsRawFd) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc != 0 || fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
pub fn pidfd_has_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn children_are_listed_and_reaped() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        assert!(own_children().unwrap().contains(&pid));
        assert!(has_children());
        // Zombie once it exits; `keep` protects it from our reaping.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::process_exists(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(reap_exited_children(Some(pid)), 0);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_socket_peer_pidfd_tells_when_the_peer_is_gone() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // A socketpair's peer is this very process.
        let Some(fd) = peer_pidfd(&ours) else {
            eprintln!("SO_PEERPIDFD not offered by this kernel; skipped");
            return;
        };
        assert!(!pidfd_has_exited(&fd));
        drop(theirs);
    }
}
