//! The dispatcher, and the commands about the daemon itself (start, stop,
//! reload, status) and the config; the rest live in a module each.

use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, ControlError, StatusReport, Stopped};
use anyhow::{Context as _, Result};
use keyward_config::LoadedConfig;
use keyward_daemon::{DaemonOptions, run};
use serde_json::json;

use crate::audit;
use crate::cli::{
    Cli, Command, ConfigCommand, DaemonCommand, GrantCommand, IdleExitArg, ServiceCommand,
    StartArgs, StopArgs,
};
use crate::context::{self, Context, DETACH_READY_TIMEOUT};
use crate::demo;
use crate::exit;
use crate::grants;
use crate::logging;
use crate::policy_cmd;
use crate::run;
use crate::secrets;
use crate::team;

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let ctx = Context::new(&cli);
    if cli.remote.is_some() && !matches!(cli.command, Command::Eval(_)) {
        use clap::CommandFactory as _;
        crate::cli::Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--remote works with `keyward eval` so far (remote runs come with the TLS proxy); \
                 run other commands against the local daemon",
            )
            .exit();
    }
    let is_daemon = matches!(
        cli.command,
        Command::Daemon(DaemonCommand::Start(StartArgs { detach: false, .. }))
    );
    let log = logging::init(cli.log_format, if is_daemon { "info" } else { "warn" });

    match &cli.command {
        Command::Version(flags) => {
            version(flags.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check(flags)) => {
            let loaded = ctx.load_config()?;
            config_check(&loaded, flags.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(flags) => block_on(status(&ctx, flags.json)),
        Command::Daemon(DaemonCommand::Start(args)) if !args.detach => {
            let home = ctx.home()?.clone();
            let loaded = ctx.load_config()?;
            if args.idle.require_runner_auth {
                context::runner_auth_verifiable(&loaded)?;
            }
            use keyward_daemon::LogControl;
            if let Err(e) = log.set_filter(&loaded.config.daemon.log_level) {
                tracing::warn!("cannot apply daemon.log_level: {e}");
            }
            let opts = DaemonOptions {
                home,
                config: loaded,
                idle_exit_override: args.idle.idle_exit.map(|i| i.0),
                require_runner_auth: args.idle.require_runner_auth,
                log: Box::new(log),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("keyward")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(DaemonCommand::Start(args)) => {
            block_on(start_detached(&ctx, &args.idle, args.json.json))
        }
        Command::Daemon(DaemonCommand::Stop(args)) => block_on(stop(&ctx, args, false)),
        Command::Run(args) => block_on(run::run(&ctx, args)),
        Command::Ca(cmd) => block_on(run::ca(&ctx, cmd)),
        Command::Demo => block_on(demo::demo(&ctx)),
        Command::Vault(cmd) => block_on(secrets::vault(&ctx, cmd)),
        Command::Secret(cmd) => block_on(secrets::secret(&ctx, cmd)),
        Command::Grant(GrantCommand::List(flags)) => block_on(grants::list(&ctx, flags.json)),
        Command::Grant(GrantCommand::Add(args)) => {
            let source = ctx.config_source()?;
            block_on(grants::add(&ctx, &source, args))
        }
        Command::Grant(GrantCommand::Rm(args)) => {
            let source = ctx.config_source()?;
            block_on(grants::remove(&ctx, &source, args))
        }
        Command::Eval(args) => block_on(policy_cmd::eval(&ctx, args)),
        Command::Policy(cmd) => policy_cmd::policy(cmd),
        Command::Audit(cmd) => audit::audit(&ctx, cmd),
        Command::Service(cmd) => service(cmd),
        Command::Token(cmd) => block_on(team::token(&ctx, cmd)),
        Command::Role(cmd) => block_on(team::role(&ctx, cmd)),
        Command::Daemon(DaemonCommand::Reload(flags)) => block_on(reload(&ctx, flags.json)),
        Command::Daemon(DaemonCommand::Restart(args)) => block_on(async {
            stop(&ctx, &args.stop, true).await?;
            start_detached(&ctx, &args.idle, args.stop.json.json).await
        }),
    }
}

fn block_on<F: Future<Output = Result<ExitCode>>>(fut: F) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fut)
}

fn version(json: bool) {
    if json {
        println!(
            "{}",
            json!({"version": keyward_api::VERSION, "commit": keyward_api::COMMIT})
        );
    } else {
        println!(
            "keyward {} (commit {})",
            keyward_api::VERSION,
            keyward_api::COMMIT
        );
    }
}

fn config_check(loaded: &LoadedConfig, json: bool) -> Result<()> {
    if json {
        let value = json!({
            "valid": true,
            "path": loaded.source.path,
            "from_file": loaded.from_file,
            "config": loaded.config,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if loaded.from_file {
        println!("# config {} is valid", loaded.source.path.display());
    } else {
        println!(
            "# {} does not exist; built-in defaults apply",
            loaded.source.path.display()
        );
    }
    println!("# effective configuration (secrets shown as [REDACTED]):");
    print!("{}", loaded.config);
    Ok(())
}

async fn status(ctx: &Context, json: bool) -> Result<ExitCode> {
    let report = control::status(ctx.home()?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(&report);
    }
    Ok(if report.running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOT_RUNNING)
    })
}

fn print_status(r: &StatusReport) {
    if !r.running {
        println!("keyward daemon is not running (home {})", r.home.display());
        if let Some(detail) = &r.detail {
            println!("{detail}");
        }
        return;
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_default();
    println!("keyward daemon is running");
    println!("  pid:        {}", r.pid.unwrap_or_default());
    println!(
        "  version:    {} (commit {})",
        show(&r.version),
        show(&r.commit)
    );
    println!("  started at: {}", show(&r.started_at));
    println!(
        "  uptime:     {}",
        humantime::format_duration(Duration::from_secs(r.uptime_s.unwrap_or_default()))
    );
    println!("  socket:     {}", r.socket.display());
    println!("  home:       {}", r.home.display());
    if let Some(port) = r.proxy_port {
        println!("  proxy:      127.0.0.1:{port}");
    }
    if let Some(state) = &r.vault_state {
        match &r.vault_mode {
            Some(mode) => println!("  vault:      {state} ({mode})"),
            None => println!("  vault:      {state}"),
        }
    }
    if let Some(protection) = &r.protection {
        println!("  protection: {protection}");
    }
    match (&r.evidence_error, &r.evidence_warning) {
        (Some(e), _) => println!(
            "  evidence:   CANNOT WRITE ({e}); decisions and proxied requests are refused until it can"
        ),
        (None, None) => println!("  evidence:   ok"),
        (None, Some(_)) => {}
    }
    if let Some(w) = &r.evidence_warning {
        println!("  evidence:   WARNING: {w}");
    }
    if let Some(grpc) = &r.grpc {
        match grpc.tls.as_str() {
            "none" => println!(
                "  grpc:       {} WITHOUT TLS: API tokens and decisions cross the network in clear",
                grpc.addr
            ),
            tls => println!("  grpc:       {} ({})", grpc.addr, tls.replace('_', " ")),
        }
    }
    if let Some(failed) = &r.reload_failed {
        println!(
            "  config:     RELOAD FAILED at {}: {}; the previous config stays in effect until a reload succeeds",
            failed.at, failed.error
        );
    }
}

/// `keyward daemon reload`: the daemon reads its config again and says
/// what it could not apply without a restart.
async fn reload(ctx: &Context, json: bool) -> Result<ExitCode> {
    let answer: keyward_api::ReloadResponse = ctx
        .client()?
        .call(hyper::Method::POST, "/v1/reload", None::<&()>)
        .await?;
    if json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        println!("the daemon reloaded {}", answer.config);
        if !answer.restart_needed.is_empty() {
            println!(
                "these changed settings apply only after `keyward daemon restart`: {}",
                answer.restart_needed.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn start_detached(ctx: &Context, idle: &IdleExitArg, json: bool) -> Result<ExitCode> {
    let home = ctx.home()?;
    let (exe, args) = ctx.daemon_command(idle.idle_exit.map(|i| i.0), idle.require_runner_auth)?;
    let pid = control::start_detached(home, &exe, args, DETACH_READY_TIMEOUT).await?;
    if json {
        println!(
            "{}",
            json!({"pid": pid, "socket": home.socket_path(), "home": home.root(), "log": home.log_path()})
        );
    } else {
        println!(
            "keyward daemon started (pid {pid}, socket {}, log {})",
            home.socket_path().display(),
            home.log_path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops the daemon; with `tolerate_not_running` (restart) a daemon that is
/// not running is fine.
async fn stop(ctx: &Context, args: &StopArgs, tolerate_not_running: bool) -> Result<ExitCode> {
    let (pid, how) = match control::stop(ctx.home()?, args.timeout, args.force).await {
        Ok(Stopped::Gracefully { pid }) => (pid, "stopped"),
        Ok(Stopped::Killed { pid }) => (pid, "killed"),
        Err(ControlError::NotRunning { .. }) if tolerate_not_running => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    match (args.json.json, tolerate_not_running) {
        (true, false) => println!("{}", json!({"pid": pid, "result": how})),
        // restart prints only the start's JSON, keeping stdout one object.
        (true, true) => {}
        (false, _) => println!("keyward daemon {how} (pid {pid})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `keyward service install|uninstall`.
fn service(cmd: &ServiceCommand) -> Result<ExitCode> {
    use keyward_daemon::service;
    let user_home = || {
        std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .context("HOME is not set, so there is no place for a user unit")
    };
    let (report, json) = match cmd {
        ServiceCommand::Install(args) => {
            let exe = std::env::current_exe().context("cannot locate the keyward binary")?;
            let report = if args.scope.system {
                service::install_system(&service::SystemInstall {
                    root: args.scope.root.clone(),
                    exe,
                    allow_uids: args.allow_uid.clone(),
                    allow_groups: args.allow_group.clone(),
                    admin_uids: args.admin_uid.clone(),
                })?
            } else {
                service::install_user(&user_home()?, &exe)?
            };
            (report, args.json.json)
        }
        ServiceCommand::Uninstall(args) => {
            let report = if args.scope.system {
                service::uninstall_system(&args.scope.root, args.purge)?
            } else {
                service::uninstall_user(&user_home()?)?
            };
            (report, args.json.json)
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for line in &report.done {
            println!("{line}");
        }
        for line in &report.next {
            println!("next: {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
