//! Process hardening applied once at daemon start.

use std::io;

/// What [`harden_process`] did, so the caller can log it. Only `mlock` may
/// legitimately fail on a healthy system; the other steps are reported as
/// errors because they never fail for an unprivileged process on Linux.
#[derive(Debug)]
pub struct HardeningReport {
    /// `PR_SET_DUMPABLE=0`: no core dumps, no same-uid ptrace, no `/proc/<pid>/mem`.
    pub non_dumpable: io::Result<()>,
    /// `RLIMIT_CORE=0`, belt and braces for the above.
    pub core_limit_zero: io::Result<()>,
    /// New soft `RLIMIT_NOFILE` (raised to the hard limit).
    pub nofile_limit: io::Result<u64>,
    /// Whether memory was locked against swapping.
    pub mlock: MlockOutcome,
}

/// Outcome of the best-effort `mlockall`.
#[derive(Debug)]
pub enum MlockOutcome {
    /// All current and future pages are locked as they are faulted in.
    Locked,
    /// Not attempted: with a finite `RLIMIT_MEMLOCK`, `MCL_FUTURE` would make
    /// allocations beyond the limit fail, which would crash the daemon later
    /// instead of now. The value is the limit in bytes.
    SkippedLimit(u64),
    /// The kernel refused.
    Failed(io::Error),
}

/// The smallest `RLIMIT_MEMLOCK` under which we still lock memory. Below it,
/// locking future pages risks allocation failures under load.
const MIN_MEMLOCK_BYTES: u64 = 1 << 30;

/// Sets the umask to 077 so every file and socket the process creates is
/// private to its owner, and returns the previous umask.
pub fn set_private_umask() -> u32 {
    // SAFETY: umask has no memory-safety preconditions and cannot fail.
    (unsafe { libc::umask(0o077) }) as u32
}

/// Applies the daemon's process hardening: private umask, non-dumpable,
/// no core files, raised file-descriptor limit, best-effort `mlockall`.
pub fn harden_process() -> HardeningReport {
    set_private_umask();
    HardeningReport {
        non_dumpable: crate::make_non_dumpable(),
        core_limit_zero: set_rlimit(libc::RLIMIT_CORE, 0, 0),
        nofile_limit: raise_nofile(),
        mlock: lock_memory(),
    }
}

fn get_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    if rc == 0 {
        Ok(lim)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit struct that outlives the call.
    let rc = unsafe { libc::setrlimit(resource, &lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn raise_nofile() -> io::Result<u64> {
    let lim = get_rlimit(libc::RLIMIT_NOFILE)?;
    if lim.rlim_cur < lim.rlim_max {
        set_rlimit(libc::RLIMIT_NOFILE, lim.rlim_max, lim.rlim_max)?;
    }
    Ok(lim.rlim_max)
}

fn lock_memory() -> MlockOutcome {
    match get_rlimit(libc::RLIMIT_MEMLOCK) {
        Err(e) => return MlockOutcome::Failed(e),
        // root (CAP_IPC_LOCK) is not bound by the limit.
        Ok(lim)
            if lim.rlim_cur != libc::RLIM_INFINITY
                && lim.rlim_cur < MIN_MEMLOCK_BYTES
                && effective_uid_raw() != 0 =>
        {
            return MlockOutcome::SkippedLimit(lim.rlim_cur);
        }
        Ok(_) => {}
    }
    // MCL_ONFAULT locks pages only once touched, so reserved-but-unused
    // memory (thread stacks, arenas) does not inflate the resident size.
    let flags = libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT;
    // SAFETY: mlockall takes only integer flags.
    let rc = unsafe { libc::mlockall(flags) };
    if rc == 0 {
        MlockOutcome::Locked
    } else {
        MlockOutcome::Failed(io::Error::last_os_error())
    }
}

fn effective_uid_raw() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_becomes_private() {
        set_private_umask();
        let previous = set_private_umask();
        assert_eq!(previous, 0o077);
    }

    #[test]
    fn nofile_soft_limit_reaches_hard_limit() {
        let hard = raise_nofile().expect("raise RLIMIT_NOFILE");
        let now = get_rlimit(libc::RLIMIT_NOFILE).unwrap();
        assert_eq!(now.rlim_cur, hard);
        assert_eq!(now.rlim_max, hard);
    }
}
