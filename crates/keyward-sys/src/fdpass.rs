//! Descriptors passed over Unix sockets (`SCM_RIGHTS`), for the fd broker:
//! a run's program gets one end of a `SOCK_SEQPACKET` pair as its fd 3,
//! the daemon the other, and each dial is answered with a fresh stream.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// At most this many descriptors are taken from one message; any more
/// that arrive are closed by the kernel (the control buffer has no room).
const MAX_FDS: usize = 4;

/// A connected `AF_UNIX` / `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Whether `fd` is a `SOCK_SEQPACKET` Unix socket (what a broker end must be).
pub fn is_unix_seqpacket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).ok() == Some(AddressFamily::UNIX)
        && rustix::net::sockopt::socket_type(fd).ok() == Some(SocketType::SEQPACKET)
}

/// Sends `data` on `socket`, with `fd` attached when given. Never raises
/// `SIGPIPE` (a gone peer is `EPIPE`); does not block.
pub fn send_with_fd(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = fd.map(|fd| [fd]);
    if let Some(fds) = &fds {
        // The buffer is sized for exactly one descriptor, so this fits.
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(pushed, "room for one descriptor");
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?)
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
    // Room for exactly `max_fds` descriptors (none: no room at all), so
    // that one more sets MSG_CTRUNC and the kernel closes the extra ones.
    let space = if max_fds == 0 {
        0
    } else {
        rustix::cmsg_space!(ScmRights(max_fds))
    };
    let mut space = vec![MaybeUninit::uninit(); space];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // CMSG_CLOEXEC: a descriptor received here must never leak into a
    // program the daemon spawns before it is handed on.
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let truncated = msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    let eof = msg.bytes == 0 && peer_closed(socket);
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
        eof,
    })
}

/// Whether the peer of `socket` has closed (or shut down) its end.
fn peer_closed(socket: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::from_borrowed_fd(socket, PollFlags::RDHUP)];
    // A zero timeout: a check, never a wait.
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut pfd, Some(&zero)).is_ok_and(|n| n > 0)
        && pfd[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP)
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
    let place = move || -> io::Result<()> {
        let raw = fd.as_raw_fd();
        if raw == target {
            // Already in place: only the close-on-exec flag must go.
            let flags = rustix::io::fcntl_getfd(&fd)?;
            rustix::io::fcntl_setfd(&fd, flags - rustix::io::FdFlags::CLOEXEC)?;
        } else {
            // SAFETY: dup2 onto a bare descriptor number (the child's
            // `target`, which it owns by no OwnedFd, so rustix's dup2 does
            // not apply); `raw` is open, owned by this closure.
            if unsafe { libc::dup2(raw, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes raw syscalls (fcntl, dup2), which are
    // async-signal-safe, and allocates nothing; it owns `fd` until the
    // Command is dropped.
    unsafe {
        cmd.pre_exec(place);
    }
}

/// A client's dial on a broker descriptor (blocking): sends `0x01`, waits
/// for the answer, and returns the stream it carries. EOF means the broker
/// is gone (the daemon stopped or the run ended); `0xFF` that it refused.
pub fn broker_dial(broker: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match send_with_fd(broker, &[0x01], None) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(broker, PollFlags::OUT)?,
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(broker, PollFlags::IN)?,
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

fn wait(fd: BorrowedFd<'_>, events: PollFlags) -> io::Result<()> {
    let mut pfd = [PollFd::from_borrowed_fd(fd, events)];
    match rustix::event::poll(&mut pfd, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
