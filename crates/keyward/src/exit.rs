//! Exit statuses (documented in `keyward --help` and the README) and the
//! one-line rendering of errors.

use std::process::ExitCode;

use crate::control::ControlError;
use keyward_api::ClientError;
use keyward_config::ConfigError;
use keyward_config::edit::EditError;
use keyward_config::home::HomeError;
use keyward_daemon::DaemonError;
use keyward_vault::VaultError;

/// Any other failure.
pub const FAILURE: u8 = 1;
/// A command-line usage error (as clap's own).
pub const COMMAND_LINE: u8 = 2;
/// The daemon is not running.
pub const NOT_RUNNING: u8 = 3;
/// Invalid configuration or usage (EX_USAGE).
pub const USAGE: u8 = 64;

/// Maps an error to its exit status by the typed error at its root.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(status_for(err))
}

fn status_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<crate::run::ProgramNotStarted>() {
            return e.status();
        }
        if cause.is::<crate::grants::GrantFlagError>() {
            return COMMAND_LINE;
        }
        if cause.is::<ConfigError>()
            || matches!(
                cause.downcast_ref::<VaultError>(),
                Some(VaultError::InvalidName { .. })
            )
        {
            return USAGE;
        }
        if cause.is::<crate::policy_cmd::PolicyInvalid>() {
            return USAGE;
        }
        if let Some(EditError::Config(_)) = cause.downcast_ref::<EditError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<HomeError>() {
            return home_status(e);
        }
        if let Some(e) = cause.downcast_ref::<DaemonError>() {
            return if e.is_usage() { USAGE } else { FAILURE };
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return client_status(e);
        }
        if let Some(e) = cause.downcast_ref::<ControlError>() {
            return match e {
                ControlError::NotRunning { .. } => NOT_RUNNING,
                ControlError::Home(h) => home_status(h),
                ControlError::Client(c) => client_status(c),
                // A detached daemon that rejected its config reports 64 too.
                ControlError::StartExited { code: Some(64), .. } => USAGE,
                _ => FAILURE,
            };
        }
    }
    FAILURE
}

fn home_status(err: &HomeError) -> u8 {
    match err {
        HomeError::SocketPath(_) | HomeError::NoHome => USAGE,
        _ => FAILURE,
    }
}

fn client_status(err: &ClientError) -> u8 {
    match err {
        ClientError::NotRunning { .. } => NOT_RUNNING,
        ClientError::SocketPath(_) => USAGE,
        // The daemon refused a config (a reload, a grant edit) or a run's
        // policy file: the same status as when the CLI reads them.
        ClientError::Api { code, .. } if code == "config_invalid" || code == "bad_policy" => USAGE,
        _ => FAILURE,
    }
}

/// `error: cause: cause`, each cause once (typed errors often repeat their
/// source in their own message).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
