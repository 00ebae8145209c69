//! The seccomp syscall filter of a sandboxed run: what Landlock cannot see
//! (other socket protocols, io_uring, other processes' scheduling and
//! limits, the terminal, namespaces, debugging interfaces). Built with
//! `seccompiler` in the parent (where allocating is safe) and installed in
//! the child between fork and exec with one `seccomp(2)` call per program.
//!
//! Everything not listed is allowed: the filter is a deny list aimed at
//! known ways out, not an allow list of what programs may do.
//!
//! Arguments the kernel takes as `int` or `unsigned int` (socket domain,
//! type and protocol, ioctl command, modes, pids) are compared on their low
//! 32 bits only: the kernel ignores the high bits, so comparing 64 bits
//! would let a caller slip past a rule by setting them.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Socket protocols an `AF_INET`/`AF_INET6` socket may use; anything else
/// (MPTCP, SCTP, SMC, UDP-Lite, raw protocols) is refused: Landlock's TCP
/// rules cover only plain TCP.
const INET_PROTOCOLS: [u64; 5] = [
    0,
    libc::IPPROTO_TCP as u64,
    libc::IPPROTO_UDP as u64,
    libc::IPPROTO_ICMP as u64,
    libc::IPPROTO_ICMPV6 as u64,
];

/// Socket domains a sandboxed program may create; every other family
/// (`AF_PACKET`, `AF_SMC`, `AF_VSOCK`, `AF_TIPC`, `AF_RDS`, Bluetooth, CAN,
/// `AF_XDP`, `AF_ALG`, ...) is refused.
const DOMAINS: [u64; 4] = [
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// Socket types refused on `AF_INET`/`AF_INET6` (the type's low bits; the
/// high ones are `SOCK_NONBLOCK`/`SOCK_CLOEXEC`): raw, reliable datagram,
/// sequenced packets (protocol 0 there means SCTP), DCCP, `SOCK_PACKET`.
const INET_TYPES_REFUSED: [u64; 5] = [3, 4, 5, 6, 10];

/// Namespace flags of `clone(2)` and `unshare(2)`: a sandboxed program makes
/// no namespace of its own (a new user namespace would hand it the
/// capabilities to mount, or to make a network the filter never saw).
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `CLONE_NEWTIME`: only `unshare(2)` and `clone3(2)` take it (in
/// `clone(2)` the bit is part of the exit signal).
const CLONE_NEWTIME: u64 = 0x80;

/// `personality(0xffffffff)` only reads the persona.
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// `IOPRIO_WHO_PROCESS`.
const IOPRIO_WHO_PROCESS: u64 = 1;

/// The first x32 syscall number (`__X32_SYSCALL_BIT`) and the highest x32
/// number the kernel knows today, with margin.
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;
#[cfg(target_arch = "x86_64")]
const X32_LAST: i64 = 600;

/// What the filter refuses with `EPERM`, one line per entry, for the
/// README and `--help`: kept next to the rules so the two agree.
pub const FILTERED_SYSCALLS: &[&str] = &[
    "socket: families other than unix/inet/inet6/netlink (packet, SMC, vsock, ...); \
     raw, seqpacket, RDM, DCCP and packet types and protocols other than TCP/UDP/ICMP \
     (MPTCP, SCTP, SMC) on inet sockets; netlink protocols other than NETLINK_ROUTE \
     (audit, uevents, sock_diag, netfilter, ...)",
    "io_uring_setup, io_uring_enter, io_uring_register",
    "ptrace, process_vm_readv, process_vm_writev, kcmp, pidfd_getfd, process_madvise",
    "bpf, perf_event_open, userfaultfd",
    "keyctl, add_key, request_key",
    "mount, umount2, pivot_root, fsopen, fsconfig, fsmount, fspick, move_mount, \
     open_tree, mount_setattr",
    "unshare and clone with a namespace flag, setns; clone3 answers ENOSYS \
     (its flags cannot be inspected; libc falls back to clone)",
    "ioctl TIOCSTI, TIOCLINUX and TIOCCONS",
    "open_by_handle_at, init_module, finit_module, delete_module, kexec_load, \
     kexec_file_load, reboot, swapon, swapoff, sethostname, setdomainname, acct, \
     settimeofday, clock_settime, clock_adjtime, adjtimex",
    "personality other than the default (0) or a query",
    "prlimit64 setting limits, setpriority, sched_setaffinity, sched_setscheduler, \
     sched_setparam, sched_setattr, ioprio_set, migrate_pages, move_pages \
     aimed at any process but the caller (pid 0)",
    "chown, fchown, lchown, fchownat",
    "chmod, fchmod, fchmodat, fchmodat2 setting the setuid or setgid bit",
    "every x32-ABI syscall (x86_64)",
];

/// Why the filter cannot be built or applied on this system.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The machine's architecture has no filter here.
    #[error("no seccomp filter for the {0} architecture (x86_64, aarch64 and riscv64 have one)")]
    Architecture(&'static str),
    /// The kernel has no seccomp filter mode.
    #[error(
        "this kernel cannot install seccomp filters (needs CONFIG_SECCOMP_FILTER, Linux 4.14 or later): {0}"
    )]
    Kernel(std::io::Error),
    /// seccompiler refused the rules (a bug in keyward).
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
}

/// The compiled filter programs, applied in order.
#[derive(Debug, Clone)]
pub struct SyscallFilter {
    pub(crate) programs: Vec<BpfProgram>,
}

/// Whether this kernel can install a filter whose action is `ERRNO`
/// (`SECCOMP_GET_ACTION_AVAIL`).
fn kernel_supports_filters() -> Result<(), FilterError> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads one u32 from a valid pointer and writes
    // nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0 as libc::c_ulong,
            &action as *const u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(FilterError::Kernel(std::io::Error::last_os_error()))
    }
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, FilterError> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(|e| FilterError::Build(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, FilterError> {
    SeccompRule::new(conds).map_err(|e| FilterError::Build(e.to_string()))
}

/// Any of `flags` set in argument `arg`.
fn any_flag(arg: u8, flags: &[u64]) -> Result<Vec<SeccompRule>, FilterError> {
    flags
        .iter()
        .map(|f| rule(vec![cond(arg, Op::MaskedEq(*f), *f)?]))
        .collect()
}

/// Argument `arg` (a pid) is not 0, i.e. names a process other than the
/// caller.
fn other_pid(arg: u8) -> Result<Vec<SeccompRule>, FilterError> {
    Ok(vec![rule(vec![cond(arg, Op::Ne, 0)?])?])
}

fn deny_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, FilterError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_process_madvise,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        // What only a privileged program does (none has a capability in a
        // sandbox; refused all the same): file handles that bypass paths,
        // kernel modules, the machine's names, clock and power.
        libc::SYS_open_by_handle_at,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
    ] {
        rules.insert(nr, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_chown, libc::SYS_lchown] {
        rules.insert(nr, Vec::new());
    }

    // socket(domain, type, protocol)
    let mut socket = vec![rule(
        DOMAINS
            .iter()
            .map(|d| cond(0, Op::Ne, *d))
            .collect::<Result<_, _>>()?,
    )?];
    for domain in [libc::AF_INET as u64, libc::AF_INET6 as u64] {
        let mut conds = vec![cond(0, Op::Eq, domain)?];
        for p in INET_PROTOCOLS {
            conds.push(cond(2, Op::Ne, p)?);
        }
        socket.push(rule(conds)?);
        for ty in INET_TYPES_REFUSED {
            socket.push(rule(vec![
                cond(0, Op::Eq, domain)?,
                cond(1, Op::MaskedEq(0xf), ty)?,
            ])?);
        }
    }
    // Netlink: only NETLINK_ROUTE (libc's getaddrinfo and `ip` read
    // interfaces with it); not audit, uevents, sock_diag, netfilter, ...
    socket.push(rule(vec![
        cond(0, Op::Eq, libc::AF_NETLINK as u64)?,
        cond(2, Op::Ne, libc::NETLINK_ROUTE as u64)?,
    ])?);
    rules.insert(libc::SYS_socket, socket);

    // ioctl(fd, cmd, arg): keystroke injection, the Linux console, console
    // output redirection.
    rules.insert(
        libc::SYS_ioctl,
        [libc::TIOCSTI, libc::TIOCLINUX, libc::TIOCCONS]
            .iter()
            .map(|c| rule(vec![cond(1, Op::Eq, *c)?]))
            .collect::<Result<_, _>>()?,
    );

    // personality(persona): only the default, or a query.
    rules.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, Op::Ne, 0)?,
            cond(0, Op::Ne, PERSONALITY_QUERY)?,
        ])?],
    );

    // Namespaces: unshare(flags), clone(flags, ...).
    let mut unshare_flags = NAMESPACE_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    rules.insert(libc::SYS_unshare, any_flag(0, &unshare_flags)?);
    rules.insert(libc::SYS_clone, any_flag(0, &NAMESPACE_FLAGS)?);

    other_process_rules(&mut rules)?;

    // Modes: no setuid or setgid bit (a setuid-to-this-user program would
    // let another account act as this user).
    let suid = [libc::S_ISUID as u64, libc::S_ISGID as u64];
    rules.insert(libc::SYS_fchmod, any_flag(1, &suid)?);
    rules.insert(libc::SYS_fchmodat, any_flag(2, &suid)?);
    rules.insert(libc::SYS_fchmodat2, any_flag(2, &suid)?);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_chmod, any_flag(1, &suid)?);

    // x32 system calls are numbered apart (with bit 30 set) and would slip
    // past every rule above: none is allowed.
    #[cfg(target_arch = "x86_64")]
    for nr in X32_BIT..=X32_BIT + X32_LAST {
        rules.insert(nr, Vec::new());
    }
    Ok(rules)
}

fn arch() -> Result<TargetArch, FilterError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| FilterError::Architecture(std::env::consts::ARCH))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, FilterError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
        .map_err(|e| FilterError::Build(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| FilterError::Build(e.to_string()))
}

/// Other processes' limits, priorities, CPUs, I/O classes and memory:
/// a program may change its own (pid 0), not another's (seccomp cannot tell
/// a run's own children from the daemon or its `keyward run`).
fn other_process_rules(rules: &mut BTreeMap<i64, Vec<SeccompRule>>) -> Result<(), FilterError> {
    // prlimit64(pid, resource, new, old): reading is fine, setting is not.
    rules.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![
            cond(0, Op::Ne, 0)?,
            SeccompCondition::new(2, Len::Qword, Op::Ne, 0)
                .map_err(|e| FilterError::Build(e.to_string()))?,
        ])?],
    );
    // setpriority(which, who, prio): PRIO_PGRP and PRIO_USER reach
    // processes outside the run (the user's daemon) even with who = 0.
    rules.insert(
        libc::SYS_setpriority,
        vec![
            rule(vec![cond(0, Op::Ne, libc::PRIO_PROCESS as u64)?])?,
            rule(vec![cond(1, Op::Ne, 0)?])?,
        ],
    );
    // ioprio_set(which, who, ioprio): likewise.
    rules.insert(
        libc::SYS_ioprio_set,
        vec![
            rule(vec![cond(0, Op::Ne, IOPRIO_WHO_PROCESS)?])?,
            rule(vec![cond(1, Op::Ne, 0)?])?,
        ],
    );
    for nr in [
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
        libc::SYS_migrate_pages,
        libc::SYS_move_pages,
    ] {
        rules.insert(nr, other_pid(0)?);
    }

    Ok(())
}

/// The filter every run gets, sandboxed or not: `clone3` answers ENOSYS
/// (libc falls back to `clone`), since `CLONE_INTO_CGROUP` would let a
/// process be born outside its run's cgroup, which Landlock cannot see;
/// and other processes' limits, priorities and CPUs cannot be changed (a
/// CPU limit of 0 on `keyward run` or the daemon kills it with SIGXCPU,
/// which no signal scope stops).
pub fn prepare_run_filter() -> Result<SyscallFilter, FilterError> {
    arch()?;
    kernel_supports_filters()?;
    let mut rules = BTreeMap::new();
    other_process_rules(&mut rules)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    Ok(SyscallFilter {
        programs: vec![
            compile(rules, SeccompAction::Errno(libc::EPERM as u32))?,
            compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?,
        ],
    })
}

/// Builds the sandbox's filter and checks that this kernel can install it.
/// A program of another architecture (a 32-bit binary on x86_64) is killed
/// by the filter's architecture check rather than let through.
pub fn prepare_syscall_filter() -> Result<SyscallFilter, FilterError> {
    arch()?;
    kernel_supports_filters()?;
    let mut programs = Vec::new();
    let mut rules = deny_rules()?;
    // x32 entries go in their own program: BPF programs are limited to
    // 4,096 instructions.
    #[cfg(target_arch = "x86_64")]
    {
        let x32: BTreeMap<i64, Vec<SeccompRule>> = rules.split_off(&X32_BIT);
        programs.push(compile(x32, SeccompAction::Errno(libc::EPERM as u32))?);
    }
    programs.push(compile(rules, SeccompAction::Errno(libc::EPERM as u32))?);
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    programs.push(compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?);
    Ok(SyscallFilter { programs })
}

/// Installs `filter` on the calling thread. Async-signal-safe: no
/// allocation, `prctl(PR_SET_NO_NEW_PRIVS)` and one `seccomp(2)` per
/// program.
pub(crate) fn install(filter: &SyscallFilter) -> std::io::Result<()> {
    for program in &filter.programs {
        seccompiler::apply_filter(program).map_err(|e| match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}
