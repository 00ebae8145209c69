//! The keyward daemon: its single-instance lifecycle and the admin API
//! served on a Unix socket (the configuration and the home's layout are
//! `keyward_config`, the runs `keyward_runs`; driving the daemon from the
//! outside, start, stop and status, is the CLI's `control.rs`).
#![forbid(unsafe_code)]

mod admin_conn;
mod admin_listener;
mod api_error;
mod broker;
mod compat_cavra;
mod daemon_log;
mod egress_evidence;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod grpc_api;
mod lifecycle;
mod notify;
pub mod pidfile;
mod redaction;
mod routes;
mod run_ending;
mod run_trust;
mod runner_auth;
pub mod service;
mod socket;
mod state;
mod team_auth;

pub use error::DaemonError;
pub use lifecycle::{DaemonOptions, run};
pub use state::LogControl;
