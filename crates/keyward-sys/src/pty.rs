//! The private terminal of `keyward run --pty`: the program gets a
//! pseudo-terminal of its own as its controlling terminal, and `keyward
//! run` relays bytes between it and the user's terminal (put in raw mode
//! meanwhile, restored afterwards). Whatever the program does to its
//! terminal (settings, keystroke injection where the kernel allows it,
//! `TIOCSCTTY` games) stays on that pseudo-terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// A new pseudo-terminal pair `(controller, program's end)`, the program's
/// end with the settings and window size of the terminal `like` (a
/// terminal the user sees).
pub fn open_pty(like: RawFd) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: termios and winsize are plain data the kernel fills.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor and buffers of the right size.
    let have_termios = unsafe { libc::tcgetattr(like, &mut termios) } == 0;
    // SAFETY: as above.
    let have_size = unsafe { libc::ioctl(like, libc::TIOCGWINSZ, &mut size) } == 0;
    let (mut controller, mut program) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name buffer is null;
    // the settings pointers are null or point at the values read above.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut program,
            std::ptr::null_mut(),
            if have_termios {
                &termios
            } else {
                std::ptr::null()
            },
            if have_size { &size } else { std::ptr::null() },
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two new descriptors this process owns.
    let (controller, program) = unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(program),
        )
    };
    for fd in [&controller, &program] {
        // SAFETY: sets close-on-exec on a descriptor owned here.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((controller, program))
}

/// Copies the window size of terminal `from` to the pseudo-terminal
/// `to` (the kernel then signals SIGWINCH to the program).
pub fn copy_window_size(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: winsize is plain data the kernel fills.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor and a buffer of the right size.
    if unsafe { libc::ioctl(from, libc::TIOCGWINSZ, &mut size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, read only.
    if unsafe { libc::ioctl(to, libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The user's terminal in raw mode (no echo, no line editing, no signals
/// from keys: they reach the program's terminal as bytes), restored as it
/// was by [`RawMode::restore`] or on drop.
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode.
    pub fn enter(fd: RawFd) -> io::Result<Self> {
        // SAFETY: termios is plain data the kernel fills.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a descriptor and a buffer of the right size.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the structure.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a descriptor and settings read above.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }

    /// Puts the terminal back as it was (idempotent).
    pub fn restore(&self) {
        // SAFETY: a descriptor and the settings saved at entry.
        unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Makes the spawned child a session leader whose controlling terminal is
/// the first of its standard descriptors that is a terminal (a
/// pseudo-terminal's program end, set up before this hook runs), so that
/// the terminal's signals, job control and `/dev/tty` are that terminal's.
pub fn controlling_terminal_on_spawn(cmd: &mut Command) {
    // SAFETY: setsid, isatty and ioctl are async-signal-safe, as required
    // between fork and exec; the closure touches no memory shared with the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = (0..3).find(|fd| libc::isatty(*fd) == 1)
                && libc::ioctl(fd, libc::TIOCSCTTY, 0) == -1
            {
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
    fn a_pty_relays_bytes_and_copies_the_window_size() {
        let (user, user_end) = open_pty(-1).unwrap();
        let size = libc::winsize {
            ws_row: 33,
            ws_col: 77,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: sets the size of a terminal owned here.
        assert_eq!(
            unsafe { libc::ioctl(user_end.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            0
        );
        let (controller, program) = open_pty(user_end.as_raw_fd()).unwrap();
        // SAFETY: winsize is plain data the kernel fills.
        let mut got: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: a descriptor and a buffer of the right size.
        assert_eq!(
            unsafe { libc::ioctl(program.as_raw_fd(), libc::TIOCGWINSZ, &mut got) },
            0
        );
        assert_eq!((got.ws_row, got.ws_col), (33, 77));
        let raw = RawMode::enter(user_end.as_raw_fd()).unwrap();
        raw.restore();
        drop((user, controller));
    }
}
