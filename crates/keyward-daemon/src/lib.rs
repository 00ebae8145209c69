//! The keyward daemon: its home layout, configuration, single-instance
//! lifecycle, and the admin API served on a Unix socket. Also the client-side
//! control of that lifecycle (detached start, stop, status inspection) so the
//! binary stays a thin CLI.
#![forbid(unsafe_code)]

mod admin_conn;
mod auth_routes;
mod authority;
mod broker;
mod compat_cavra;
pub mod config;
pub mod config_edit;
pub mod control;
mod daemon_log;
mod egress_evidence;
mod error;
mod frozen;
#[doc(hidden)]
pub mod fuzzing;
mod grant_routes;
pub mod grants;
mod grpc_api;
pub mod home;
mod lifecycle;
pub mod net_bridge;
mod notify;
pub mod pidfile;
mod policy_routes;
mod run_cgroup;
mod run_report;
mod run_routes;
mod run_tasks;
mod run_trust;
mod runner_auth;
pub mod runs;
pub mod sandbox;
mod server;
pub mod service;
mod team_auth;
mod vault_routes;

pub use error::DaemonError;
pub use lifecycle::{DaemonOptions, LogControl, run};
