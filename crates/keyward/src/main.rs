//! The `keyward` binary: parse the command line, install the TLS provider
//! and logging, dispatch, and turn errors into documented exit statuses.
#![forbid(unsafe_code)]

mod audit;
mod cli;
mod commands;
mod context;
mod control;
mod demo;
mod exit;
mod grants;
mod logging;
mod policy_cmd;
mod run;
mod run_pty;
mod runner_auth;
mod secrets;
mod team;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::try_parse() {
        Ok(cli) => cli,
        // `keyward eval` exits 2 and 3 only for block and require_approval:
        // a usage error there is a failure (1), never a decision.
        Err(e) if e.use_stderr() && cli::names_eval(std::env::args_os().skip(1)) => {
            let _ = e.print();
            return ExitCode::from(exit::FAILURE);
        }
        // `keyward run --grant g make test`: the program was taken for an
        // argument of keyward's.
        Err(e)
            if e.kind() == clap::error::ErrorKind::UnknownArgument
                && cli::subcommand(std::env::args_os().skip(1)).as_deref() == Some("run")
                && !std::env::args_os().any(|a| a == "--") =>
        {
            let _ = e.print();
            eprintln!(
                "tip: the program and its arguments go after `--`: keyward run [OPTIONS] -- CMD [ARGS]..."
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let eval = matches!(cli.command, cli::Command::Eval(_));
    // Exactly one crypto provider in the process, chosen before any TLS use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("keyward: {}", exit::render(&err));
            if eval {
                // Every error of `keyward eval` (config, transport, a
                // request that cannot be decided) is 1.
                ExitCode::from(exit::FAILURE)
            } else {
                exit::code_for(&err)
            }
        }
    }
}
