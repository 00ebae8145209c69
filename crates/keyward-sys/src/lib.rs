//! The only crate in keyward allowed to use `unsafe`: every raw syscall goes
//! through a small, safe, documented function here so the rest of the
//! workspace can keep `#![forbid(unsafe_code)]`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod fs;
mod harden;
mod process;

pub use fs::{redirect_output, reserve_space};

pub use harden::{HardeningReport, MlockOutcome, harden_process, set_private_umask};
pub use process::{
    Signal, effective_uid, new_session_on_spawn, pidfd_exited, pidfd_open, process_exists,
    send_signal,
};
