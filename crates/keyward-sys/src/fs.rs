//! File space and the process's own output.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Allocates `len` bytes of `file` from `offset` on without changing its
/// size (`fallocate` with `FALLOC_FL_KEEP_SIZE`): later writes there cannot
/// fail for want of space, and an error (`ENOSPC`) says there is none.
pub fn reserve_space(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "offset or length too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_big())?;
    // SAFETY: the descriptor is owned by `file`, which outlives the call;
    // fallocate takes no pointers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points this process's stdout and stderr at `file` (`dup2`), so that
/// everything written to them from now on (log lines, a panic message)
/// goes there; the descriptors they had are closed.
pub fn redirect_output(file: &File) -> io::Result<()> {
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 takes no pointers; `file`'s descriptor is open for
        // the duration of the call, and the targets are the standard
        // descriptors, which std only ever uses by number.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_without_growing_the_file() {
        let file = unlinked_temp_file();
        reserve_space(&file, 0, 1 << 16).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert!(reserve_space(&file, u64::MAX, 1).is_err());
    }

    fn unlinked_temp_file() -> File {
        let path = std::env::temp_dir().join(format!("keyward-sys-fs-{}", std::process::id()));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
