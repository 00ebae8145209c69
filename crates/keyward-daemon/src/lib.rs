//! The keyward daemon: its home layout, configuration, single-instance
//! lifecycle, and the admin API served on a Unix socket. Also the client-side
//! control of that lifecycle (detached start, stop, status inspection) so the
//! binary stays a thin CLI.
#![forbid(unsafe_code)]

mod activity;
mod admin_conn;
mod admin_listener;
mod api_error;
mod authority;
mod broker;
mod compat_cavra;
pub mod control;
mod daemon_log;
mod egress_evidence;
mod error;
mod frozen;
#[doc(hidden)]
pub mod fuzzing;
pub mod home;
mod lifecycle;
pub mod net_bridge;
mod notify;
pub mod pidfile;
mod redaction;
mod routes;
mod run_cgroup;
mod run_report;
mod run_tasks;
mod run_trust;
mod runner_auth;
pub mod runs;
pub mod sandbox;
pub mod service;
mod socket;
mod state;

pub use error::DaemonError;
pub use lifecycle::{DaemonOptions, run};
pub use state::LogControl;
