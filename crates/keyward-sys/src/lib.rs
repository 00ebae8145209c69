//! The only crate in keyward allowed to use `unsafe`: every raw syscall goes
//! through a small, safe, documented function here so the rest of the
//! workspace can keep `#![forbid(unsafe_code)]`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod confine;
mod fdpass;
mod fs;
mod harden;
mod mount_view;
mod netns;
mod process;
mod pty;
mod sandbox;
mod syscall_filter;

pub use confine::{
    become_child_subreaper, has_children, kill_with_parent_on_spawn, make_non_dumpable,
    own_children, peer_pidfd, pidfd_has_exited, reap_any_exited, reap_exited_children,
};
pub use fdpass::{
    AsyncSeqpacket, Received, broker_dial, broker_dial_inherited, is_unix_seqpacket,
    pass_fd_on_spawn, recv_with_fds, send_with_fd, seqpacket_pair,
};
pub use fs::{redirect_output, reserve_space};
pub use mount_view::{MountView, MountViewError, MountViewSpec, probe_mount_view};
pub use netns::{
    ForwardedListener, MAX_FORWARDS, NamespaceKind, NamespaceListeners, NamespaceUnavailable,
    PrivateNetwork, namespace_kind, private_network, probe_private_network,
};
pub use pty::{RawMode, controlling_terminal_on_spawn, copy_window_size, is_terminal, open_pty};
pub use sandbox::{
    PreparedSandbox, SandboxError, SandboxRules, cgroup_mounts, landlock_abi, prepare_sandbox,
    sandbox_on_spawn,
};
pub use syscall_filter::{
    FILTERED_SYSCALLS, FilterError, SyscallFilter, prepare_run_filter, prepare_syscall_filter,
};

pub use harden::{HardeningReport, MlockOutcome, harden_process, set_private_umask};
pub use process::{
    Signal, effective_uid, new_session_on_spawn, pidfd_exited, pidfd_open, process_exists,
    send_signal,
};
