//! The `keyward` binary: parse the command line, install the TLS provider
//! and logging, dispatch, and turn errors into documented exit statuses.
#![forbid(unsafe_code)]

mod audit;
mod cli;
mod commands;
mod demo;
mod exit;
mod grants;
mod logging;
mod policy_cmd;
mod run;
mod runner_auth;
mod secrets;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Exactly one crypto provider in the process, chosen before any TLS use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("keyward: {}", exit::render(&err));
            exit::code_for(&err)
        }
    }
}
