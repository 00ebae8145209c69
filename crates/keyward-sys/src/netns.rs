//! The private network namespace of a sandboxed run: the program starts in
//! a network namespace of its own (plus a user namespace when this process
//! is not root) with only loopback up. Between fork and exec, before
//! Landlock and the seccomp filter (which refuses `unshare`), the child
//! makes the namespace, brings `lo` up, opens one listening TCP socket per
//! forwarded port on `127.0.0.1` *inside* it, and hands those listeners to
//! `keyward run` over a socketpair (`SCM_RIGHTS`). `keyward run`, which
//! stays in the host's namespace, accepts on them and relays each
//! connection to the same port on the host's loopback: that is the only
//! way out of the namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// At most this many ports are forwarded into one namespace (the proxy's
/// and `--allow-port`s): all listeners travel in one message.
pub const MAX_FORWARDS: usize = 64;

/// `SIOCGIFFLAGS` / `SIOCSIFFLAGS` (Linux).
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// How the namespace is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    /// A network namespace alone (this process has `CAP_SYS_ADMIN`: root).
    Network,
    /// A user namespace (this user mapped to itself, nothing else) and a
    /// network namespace owned by it.
    UserAndNetwork,
}

impl NamespaceKind {
    /// What the run record says: `net` or `user+net`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Network => "net",
            Self::UserAndNetwork => "user+net",
        }
    }

    fn flags(self) -> libc::c_int {
        match self {
            Self::Network => libc::CLONE_NEWNET,
            Self::UserAndNetwork => libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
        }
    }
}

/// Why a private network namespace cannot be made here.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{hint}")]
pub struct NamespaceUnavailable {
    what: &'static str,
    source: io::Error,
    hint: String,
}

impl NamespaceUnavailable {
    pub(crate) fn new(what: &'static str, source: io::Error, hint: String) -> Self {
        Self { what, source, hint }
    }
}

/// The kind of namespace this process would make: a network namespace
/// alone as root, else a user namespace with it.
pub fn namespace_kind() -> NamespaceKind {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        NamespaceKind::Network
    } else {
        NamespaceKind::UserAndNetwork
    }
}

/// Tries, in a forked child that exits at once, exactly what the run's
/// program will do (`unshare`, the identity map, `lo` up), so a kernel that
/// forbids it is known before anything starts. The error names the
/// sysctls that decide it.
pub fn probe_private_network(kind: NamespaceKind) -> Result<(), NamespaceUnavailable> {
    let maps = IdMaps::current();
    // SAFETY: `enter` only makes the namespace (async-signal-safe calls on
    // the maps prepared above).
    probe_in_fork(&|| unsafe { enter(kind, &maps) }.map_err(|(_, e)| e)).map_err(|source| {
        NamespaceUnavailable {
            what: match kind {
                NamespaceKind::Network => "cannot make a network namespace (unshare CLONE_NEWNET)",
                NamespaceKind::UserAndNetwork => {
                    "cannot make an unprivileged user and network namespace \
                     (unshare CLONE_NEWUSER|CLONE_NEWNET)"
                }
            },
            source,
            hint: sysctl_hint(kind == NamespaceKind::Network),
        }
    })
}

/// Runs `step` in a forked child that exits at once, so that what a
/// spawned program will do between fork and exec is known to work (or not)
/// before anything starts. The error is the errno `step` failed with.
///
/// `step` must only make async-signal-safe calls on memory prepared before
/// the fork.
pub(crate) fn probe_in_fork(step: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
    // SAFETY: the child runs only `step` (async-signal-safe by contract)
    // and exits without returning.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match step() {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO).clamp(1, 255),
        };
        // SAFETY: leaves the child at once, running no destructor.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child forked above.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    // The child's exit status is the errno of the step that failed.
    Err(io::Error::from_raw_os_error(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        libc::EIO
    }))
}

/// The sysctls that forbid unprivileged user namespaces, with their values
/// where this kernel has them.
pub(crate) fn sysctl_hint(privileged: bool) -> String {
    if privileged {
        return "; this needs CAP_SYS_ADMIN and a kernel with CONFIG_NET_NS \
                (a container may forbid it with its seccomp profile)"
            .to_owned();
    }
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|_| "absent".to_owned())
    };
    let mut hint = format!(
        "; unprivileged user namespaces are decided by the sysctls \
         kernel.unprivileged_userns_clone (here: {}) and user.max_user_namespaces (here: {})",
        read("/proc/sys/kernel/unprivileged_userns_clone"),
        read("/proc/sys/user/max_user_namespaces"),
    );
    let apparmor = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    if apparmor != "absent" {
        hint.push_str(&format!(
            ", and by kernel.apparmor_restrict_unprivileged_userns (here: {apparmor})"
        ));
    }
    hint.push_str(
        "; enable them (e.g. `sysctl -w kernel.unprivileged_userns_clone=1` or \
         `sysctl -w user.max_user_namespaces=15000`)",
    );
    hint
}

/// `/proc/self/uid_map` and `gid_map` lines mapping this user and group to
/// themselves, formatted before the fork.
#[derive(Debug, Clone)]
pub(crate) struct IdMaps {
    uid: Vec<u8>,
    gid: Vec<u8>,
}

impl IdMaps {
    pub(crate) fn current() -> Self {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            uid: format!("{uid} {uid} 1\n").into_bytes(),
            gid: format!("{gid} {gid} 1\n").into_bytes(),
        }
    }
}

/// A private network namespace to be made in a spawned child, with the
/// ports whose listeners it hands back.
#[derive(Debug)]
pub struct PrivateNetwork {
    kind: NamespaceKind,
    maps: IdMaps,
    ports: Vec<u16>,
    /// The child's end of the socketpair the listeners cross.
    child_end: OwnedFd,
}

/// This process's end: where the listeners arrive once the child has
/// started.
#[derive(Debug)]
pub struct NamespaceListeners {
    parent_end: OwnedFd,
    ports: Vec<u16>,
}

/// Prepares a namespace of `kind` in which `127.0.0.1:<port>` (and
/// `[::1]:<port>` where it has IPv6) listens for each of `ports`
/// (deduplicated; at most [`MAX_FORWARDS`]).
pub fn private_network(
    kind: NamespaceKind,
    ports: &[u16],
) -> io::Result<(PrivateNetwork, NamespaceListeners)> {
    let mut unique: Vec<u16> = Vec::new();
    for p in ports {
        if !unique.contains(p) {
            unique.push(*p);
        }
    }
    if unique.len() > MAX_FORWARDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} ports to forward into the run's network namespace; at most {MAX_FORWARDS}",
                unique.len()
            ),
        ));
    }
    let (parent_end, child_end) = crate::seqpacket_pair()?;
    Ok((
        PrivateNetwork {
            kind,
            maps: IdMaps::current(),
            ports: unique.clone(),
            child_end,
        },
        NamespaceListeners {
            parent_end,
            ports: unique,
        },
    ))
}

/// One listener the run's namespace opened: `127.0.0.1:port`, or
/// `[::1]:port` when `ipv6`.
#[derive(Debug)]
pub struct ForwardedListener {
    /// The port it listens on, inside the namespace.
    pub port: u16,
    /// Whether it listens on `::1` rather than `127.0.0.1`.
    pub ipv6: bool,
    /// The listening socket (in the namespace; served from here).
    pub listener: std::net::TcpListener,
}

/// Bytes describing one listener in the message: the port (little
/// endian) and the family (4 or 6).
const ENTRY: usize = 3;

impl NamespaceListeners {
    /// The listeners the child opened inside its namespace: one on
    /// `127.0.0.1` per port, and one on `::1` where the namespace has IPv6.
    /// Call after the spawn succeeded (the child sent them before exec).
    pub fn receive(self) -> io::Result<Vec<ForwardedListener>> {
        let mut data = vec![0u8; ENTRY * 2 * MAX_FORWARDS + 1];
        let fd_bytes = 2 * MAX_FORWARDS * std::mem::size_of::<RawFd>();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: zeroed msghdr is a valid empty message; fields set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg points at live buffers for the duration of the call.
        let got = unsafe {
            libc::recvmsg(
                self.parent_end.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        // SAFETY: walking the control messages the kernel wrote; each
        // SCM_RIGHTS payload is an array of new descriptors we now own.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let entries: Vec<(u16, u8)> = data[..got as usize]
            .chunks_exact(ENTRY)
            .map(|c| (u16::from_le_bytes([c[0], c[1]]), c[2]))
            .collect();
        let well_formed = (got as usize).is_multiple_of(ENTRY)
            && fds.len() == entries.len()
            && msg.msg_flags & libc::MSG_CTRUNC == 0
            && entries
                .iter()
                .all(|(port, family)| self.ports.contains(port) && matches!(family, 4 | 6))
            && self.ports.iter().all(|p| entries.contains(&(*p, 4)));
        if !well_formed {
            return Err(io::Error::other(format!(
                "the run's network namespace sent {} listener(s) for {entries:?}; \
                 expected one on 127.0.0.1 for each of {:?}",
                fds.len(),
                self.ports
            )));
        }
        Ok(entries
            .into_iter()
            .zip(fds)
            .map(|((port, family), fd)| ForwardedListener {
                port,
                ipv6: family == 6,
                listener: std::net::TcpListener::from(fd),
            })
            .collect())
    }
}

/// Makes the namespace in the calling (single-threaded, forked) process:
/// `unshare`, the identity map for a user namespace, `lo` up. The error
/// carries the step (1 unshare, 2 setgroups, 3 uid_map, 4 gid_map, 5 lo).
///
/// # Safety
/// Only between fork and exec (or in a forked child that exits): it
/// changes the calling process's namespaces. Async-signal-safe.
unsafe fn enter(kind: NamespaceKind, maps: &IdMaps) -> Result<(), (i32, io::Error)> {
    // SAFETY: as this function's own contract.
    unsafe { unshare_mapped(kind.flags(), maps) }?;
    loopback_up().map_err(|e| (5, e))
}

/// `unshare(flags)`, then, when `flags` makes a user namespace, this user
/// and group mapped to themselves in it. The error carries the step (1
/// unshare, 2 setgroups, 3 uid_map, 4 gid_map).
///
/// # Safety
/// Only between fork and exec (or in a forked child that exits): it
/// changes the calling process's namespaces. Async-signal-safe.
pub(crate) unsafe fn unshare_mapped(
    flags: libc::c_int,
    maps: &IdMaps,
) -> Result<(), (i32, io::Error)> {
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err((1, io::Error::last_os_error()));
    }
    if flags & libc::CLONE_NEWUSER != 0 {
        // `keyward run` is non-dumpable, and so is this copy of it, which
        // makes its /proc files root's: it is made dumpable for the three
        // writes and non-dumpable again (exec makes the program dumpable).
        // SAFETY: prctl takes integers only.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) };
        let written = write_proc(c"/proc/self/setgroups", b"deny")
            .map_err(|e| (2, e))
            .and_then(|()| write_proc(c"/proc/self/uid_map", &maps.uid).map_err(|e| (3, e)))
            .and_then(|()| write_proc(c"/proc/self/gid_map", &maps.gid).map_err(|e| (4, e)));
        if dumpable == 0 {
            // SAFETY: as above.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
        }
        written?;
    }
    Ok(())
}

/// Writes `data` to a `/proc` file in one `write`. Async-signal-safe.
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes from a live buffer of `data.len()` bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace (which gives it
/// 127.0.0.1/8 and ::1). Async-signal-safe.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the two ioctls, closed below;
    // `ifreq` is plain data, zeroed then named.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(s, SIOCGIFFLAGS as _, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(s, SIOCSIFFLAGS as _, &ifr);
        }
        let err = io::Error::last_os_error();
        libc::close(s);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// A TCP socket listening on `127.0.0.1:port`, or `[::1]:port` when
/// `ipv6`. Async-signal-safe.
fn listen_loopback(port: u16, ipv6: bool) -> io::Result<RawFd> {
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it returns it (closed on error); the addresses are plain data.
    unsafe {
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        let s = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let bound = if ipv6 {
            let one: libc::c_int = 1;
            libc::setsockopt(
                s,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addr.sin6_port = port.to_be();
            addr.sin6_addr.s6_addr = std::net::Ipv6Addr::LOCALHOST.octets();
            libc::bind(
                s,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        } else {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = port.to_be();
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            libc::bind(
                s,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if bound != 0 || libc::listen(s, 1024) != 0 {
            let err = io::Error::last_os_error();
            libc::close(s);
            return Err(err);
        }
        Ok(s)
    }
}

/// Sends `fds` with their `(port, family)` entries as data, in one
/// message. No allocation: the buffers are on the stack. Async-signal-safe.
fn send_listeners(socket: RawFd, entries: &[(u16, u8)], fds: &[RawFd]) -> io::Result<()> {
    // Room for 2 * MAX_FORWARDS descriptors plus the header, 8-byte aligned.
    let mut control = [0u64; (2 * MAX_FORWARDS * 4 + 32) / 8];
    let mut data = [0u8; ENTRY * 2 * MAX_FORWARDS];
    for (i, (port, family)) in entries.iter().enumerate() {
        data[ENTRY * i..ENTRY * i + 2].copy_from_slice(&port.to_le_bytes());
        data[ENTRY * i + 2] = *family;
    }
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: ENTRY * entries.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: the msghdr points at the stack buffers above, which outlive
    // the call; the control buffer has room for CMSG_SPACE(fd_bytes)
    // (checked against its size).
    unsafe {
        let space = libc::CMSG_SPACE(fd_bytes) as usize;
        if space > std::mem::size_of_val(&control) {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(p.add(i), *fd);
        }
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl PrivateNetwork {
    /// What the namespace is (for the run record).
    pub fn kind(&self) -> NamespaceKind {
        self.kind
    }

    /// In the spawned child, between fork and exec and before Landlock and
    /// the seccomp filter: makes the namespace, opens the listeners and
    /// hands them to `keyward run`, keeping none. Async-signal-safe.
    pub(crate) fn enter_in_child(&self) -> io::Result<()> {
        // SAFETY: called only from a pre_exec hook.
        unsafe { enter(self.kind, &self.maps) }.map_err(|(_, e)| e)?;
        let mut fds = [-1 as RawFd; 2 * MAX_FORWARDS];
        let mut entries = [(0u16, 0u8); 2 * MAX_FORWARDS];
        let mut n = 0;
        let mut result = Ok(());
        for port in &self.ports {
            match listen_loopback(*port, false) {
                Ok(fd) => {
                    (fds[n], entries[n]) = (fd, (*port, 4));
                    n += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            // `localhost` may resolve to ::1 first; a namespace without
            // IPv6 simply has no such listener.
            if let Ok(fd) = listen_loopback(*port, true) {
                (fds[n], entries[n]) = (fd, (*port, 6));
                n += 1;
            }
        }
        if result.is_ok() {
            result = send_listeners(self.child_end.as_raw_fd(), &entries[..n], &fds[..n]);
        }
        for fd in fds.iter().take(n) {
            // SAFETY: closes the listeners this child opened; the parent
            // holds its own copies now.
            unsafe { libc::close(*fd) };
        }
        result
    }
}
