//! Descriptors passed over Unix sockets (`SCM_RIGHTS`), for the fd broker:
//! a run's program gets one end of a `SOCK_SEQPACKET` pair as its fd 3,
//! the daemon the other, and each dial is answered with a fresh stream.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;

/// At most this many descriptors are taken from one message; any more
/// that arrive are closed by the kernel (the control buffer has no room).
const MAX_FDS: usize = 4;

/// A connected `AF_UNIX` / `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `fd` is a `SOCK_SEQPACKET` Unix socket (what a broker end must be).
pub fn is_unix_seqpacket(fd: BorrowedFd<'_>) -> bool {
    let get = |opt: libc::c_int| {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into an int.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    get(libc::SO_DOMAIN) == Some(libc::AF_UNIX) && get(libc::SO_TYPE) == Some(libc::SOCK_SEQPACKET)
}

/// Sends `data` on `socket`, with `fd` attached when given. Never raises
/// `SIGPIPE` (a gone peer is `EPIPE`); does not block.
pub fn send_with_fd(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr is a valid empty message; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and one fd
        // (CMSG_SPACE above); CMSG_FIRSTHDR points into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One message received by [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes written into the buffer (0 with an empty `fds`: end of stream).
    pub len: usize,
    /// Descriptors that came with it (close-on-exec), at most `max_fds`.
    pub fds: Vec<OwnedFd>,
    /// The message did not fit the buffer, or carried more descriptors
    /// than were taken (`MSG_TRUNC` / `MSG_CTRUNC`).
    pub truncated: bool,
    /// The peer closed its end: nothing more will come. (A zero-length
    /// message also reads 0 bytes; it is not the end.)
    pub eof: bool,
}

/// Receives one message (without blocking) into `buf`, taking up to
/// `max_fds` descriptors sent with it (no more than 4); the kernel closes
/// the rest.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if max_fds == 0 {
        0
    } else {
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) as usize }
    };
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr is a valid empty message; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    if space > 0 {
        // SAFETY: walking the control messages the kernel wrote, within
        // msg_controllen; each SCM_RIGHTS payload is an array of ints, each
        // a new descriptor that this process now owns.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    let eof = n == 0 && peer_closed(socket);
    Ok(Received {
        len: n as usize,
        fds,
        truncated,
        eof,
    })
}

/// Whether the peer of `socket` has closed (or shut down) its end.
fn peer_closed(socket: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// A `SOCK_SEQPACKET` socket watched by the tokio reactor: the daemon's
/// end of a broker.
pub struct AsyncSeqpacket(tokio::io::unix::AsyncFd<OwnedFd>);

impl AsyncSeqpacket {
    /// Watches `fd` (made non-blocking); fails unless it is a
    /// `SOCK_SEQPACKET` Unix socket. Needs a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        if !is_unix_seqpacket(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a SOCK_SEQPACKET Unix socket",
            ));
        }
        // SAFETY: the AsyncFd owns `fd`, so it stays open and the same for
        // the AsyncFd's whole life.
        unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map(Self)
            .map_err(|e| e.into_parts().1)
    }

    /// The next message, as [`recv_with_fds`] gives it.
    pub async fn recv(&self, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| recv_with_fds(fd.as_fd(), buf, max_fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `data`, with `fd` attached when given.
    pub async fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        loop {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|sock| send_with_fd(sock.as_fd(), data, fd)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Gives the program `fd` as its descriptor `target`, inherited across
/// exec (the parent's copy closes when `cmd` is dropped).
pub fn pass_fd_on_spawn(cmd: &mut Command, fd: OwnedFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure owns `fd`
    // until the Command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == target {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A client's dial on a broker descriptor (blocking): sends `0x01`, waits
/// for the answer, and returns the stream it carries. EOF means the broker
/// is gone (the daemon stopped or the run ended); `0xFF` that it refused.
pub fn broker_dial(broker: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match send_with_fd(broker, &[0x01], None) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(broker, libc::POLLOUT)?,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(broker_gone()),
            Err(e) => return Err(e),
        }
    }
    let mut answer = [0u8; 2];
    loop {
        match recv_with_fds(broker, &mut answer, 1) {
            Ok(got) if got.eof => return Err(broker_gone()),
            Ok(mut got)
                if got.len == 1 && answer[0] == 0x01 && got.fds.len() == 1 && !got.truncated =>
            {
                return Ok(got.fds.remove(0));
            }
            Ok(_) => {
                return Err(io::Error::other(
                    "the keyward broker refused the dial (0xFF): see the daemon log",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(broker, libc::POLLIN)?,
            Err(e) => return Err(e),
        }
    }
}

/// [`broker_dial`] on descriptor number `fd`, which this process inherited
/// and keeps (it is borrowed, never closed). Refused unless it is a
/// `SOCK_SEQPACKET` Unix socket, so a wrong number cannot make this
/// operate on some other open file.
pub fn broker_dial_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the descriptor is only borrowed for this call; F_GETFD
    // checks it is open before anything else uses it.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "descriptor {fd} is not open: is this program running under `keyward run --broker fd`?"
            ),
        ));
    }
    // SAFETY: open (checked above) and not closed while borrowed.
    let broker = unsafe { BorrowedFd::borrow_raw(fd) };
    if !is_unix_seqpacket(broker) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a keyward broker (not a SOCK_SEQPACKET Unix socket)"),
        ));
    }
    broker_dial(broker)
}

fn broker_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the keyward broker is gone (EOF): the daemon stopped or the run ended",
    )
}

fn wait(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, -1) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_crosses_a_seqpacket_pair_and_extra_bytes_are_flagged() {
        let (a, b) = seqpacket_pair().unwrap();
        assert!(is_unix_seqpacket(a.as_fd()));
        let (x, _y) = seqpacket_pair().unwrap();
        send_with_fd(a.as_fd(), &[0x01], Some(x.as_fd())).unwrap();
        let mut buf = [0u8; 2];
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(
            (got.len, buf[0], got.fds.len(), got.truncated),
            (1, 1, 1, false)
        );
        assert!(is_unix_seqpacket(got.fds[0].as_fd()));
        // An oversized datagram is cut and flagged; a descriptor sent to a
        // receiver that takes none is dropped and flagged.
        send_with_fd(a.as_fd(), &[1, 2, 3, 4], Some(x.as_fd())).unwrap();
        let got = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert!(got.truncated && got.fds.is_empty());
        // An empty message is not the end; a closed peer is.
        send_with_fd(a.as_fd(), &[], None).unwrap();
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!((got.len, got.eof), (0, false));
        drop(a);
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(
            (got.len, got.fds.len(), got.eof),
            (0, 0, true),
            "EOF once the peer is gone"
        );
    }
}
