//! Signals, process liveness and sessions.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The signals keyward sends to other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful stop.
    Term,
    /// Forced stop.
    Kill,
    /// Reload configuration.
    Hup,
    /// Interrupt (Ctrl-C).
    Int,
    /// Quit (Ctrl-\\).
    Quit,
    /// Stop, which cannot be caught or ignored.
    Stop,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Stop => libc::SIGSTOP,
        }
    }
}

fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    // pid 0 and negative pids address process groups; never allow that here.
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a valid process id"),
        )),
    }
}

/// Sends `signal` to the single process `pid`.
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = checked_pid(pid)?;
    // SAFETY: kill takes only integers; pid is a positive single-process id.
    let rc = unsafe { libc::kill(pid, signal.raw()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a process with this pid is alive (possibly owned by someone
/// else). A zombie counts as gone: it has exited, released its files and
/// locks, and only waits for a parent that may never reap it.
pub fn process_exists(pid: u32) -> bool {
    let Ok(raw) = checked_pid(pid) else {
        return false;
    };
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(raw, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !has_exited(pid)
}

/// Whether every thread of `pid` has exited (zombies count as exited). The
/// main thread alone does not tell: a killed multi-threaded process can
/// show it as a zombie while the other threads are still exiting, holding
/// the process's descriptors (a listening socket among them).
fn has_exited(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    !threads.flatten().any(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses
            // and may itself contain spaces and parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X')
        })
    })
}

/// Opens a pidfd for `pid` (Linux 5.3+): it becomes readable when the
/// process exits, so a waiter needs no polling.
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = checked_pid(pid)?;
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new
    // file descriptor that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Waits, without polling, until the process behind `pidfd` exits.
pub async fn pidfd_exited(pidfd: std::os::fd::OwnedFd) -> io::Result<()> {
    // SAFETY: `pidfd` is an open descriptor we own; the AsyncFd takes it
    // over and keeps it open, unchanged, until the AsyncFd is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Makes the spawned child start a new session (`setsid`), detaching it from
/// the caller's controlling terminal and process group.
pub fn new_session_on_spawn(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe, as required between fork and exec,
    // and the closure touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_exists_and_pid_zero_is_rejected() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(send_signal(0, Signal::Term).is_err());
    }

    #[test]
    fn signal_reaches_child_and_it_disappears() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        send_signal(child.id(), Signal::Kill).unwrap();
        // Unreaped, the child is a zombie: already gone for our purposes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process_exists(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!process_exists(child.id()));
        let status = child.wait().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn pidfd_becomes_readable_when_the_process_exits() {
        use std::os::fd::AsRawFd;
        let mut child = Command::new("sleep").arg("0.1").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, 5 s timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "pidfd not readable after exit");
        child.wait().unwrap();
        assert!(pidfd_open(0).is_err());
    }

    #[test]
    fn spawned_child_leads_a_new_session() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$; cut -d' ' -f6 /proc/$$/stat"]);
        new_session_on_spawn(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let pid = lines.next().unwrap();
        let sid = lines.next().unwrap();
        // A session leader's session id is its own pid.
        assert_eq!(pid, sid);
    }
}
