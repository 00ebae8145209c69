//! One function per command: resolve inputs, call the library, print.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use keyward_config::home::Home;
use keyward_config::{self as config, ConfigSource, LoadedConfig};
use keyward_daemon::control::{self, ControlError, StatusReport, Stopped};
use keyward_daemon::{DaemonOptions, run};
use serde_json::json;

use crate::audit;
use crate::cli::{
    Cli, Command, ConfigCommand, DaemonCommand, GrantCommand, IdleExitArg, ServiceCommand,
    StartArgs, StopArgs,
};
use crate::demo;
use crate::exit;
use crate::grants;
use crate::logging;
use crate::policy_cmd;
use crate::run;
use crate::secrets;

/// How long `daemon start --detach` waits for readiness.
const DETACH_READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
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
            let loaded = load_config(&cli)?;
            config_check(&loaded, flags.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(flags) => block_on(status(&cli, flags.json)),
        Command::Daemon(DaemonCommand::Start(args)) if !args.detach => {
            let home = Home::resolve(cli.home.as_deref())?;
            let loaded = load_config(&cli)?;
            if args.idle.require_runner_auth {
                runner_auth_verifiable(&loaded)?;
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
            block_on(start_detached(&cli, &args.idle, args.json.json))
        }
        Command::Daemon(DaemonCommand::Stop(args)) => block_on(stop(&cli, args, false)),
        Command::Run(args) => block_on(run::run(&cli, args)),
        Command::Ca(cmd) => block_on(run::ca(&cli, cmd)),
        Command::Demo => block_on(demo::demo(&cli)),
        Command::Vault(cmd) => block_on(secrets::vault(&cli, cmd)),
        Command::Secret(cmd) => block_on(secrets::secret(&cli, cmd)),
        Command::Grant(GrantCommand::List(flags)) => block_on(grants::list(&cli, flags.json)),
        Command::Grant(GrantCommand::Add(args)) => {
            let source = config_source(&cli)?;
            block_on(grants::add(&cli, &source, args))
        }
        Command::Grant(GrantCommand::Rm(args)) => {
            let source = config_source(&cli)?;
            block_on(grants::remove(&cli, &source, args))
        }
        Command::Eval(args) => block_on(policy_cmd::eval(&cli, args)),
        Command::Policy(cmd) => policy_cmd::policy(cmd),
        Command::Audit(cmd) => audit::audit(&cli, cmd),
        Command::Service(cmd) => service(cmd),
        Command::Daemon(DaemonCommand::Reload(flags)) => block_on(reload(&cli, flags.json)),
        Command::Daemon(DaemonCommand::Restart(args)) => block_on(async {
            stop(&cli, &args.stop, true).await?;
            start_detached(&cli, &args.idle, args.stop.json.json).await
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

/// The config source: `--config`/`KEYWARD_CONFIG` must exist; the default
/// `<home>/keyward.toml` may be absent.
fn config_source(cli: &Cli) -> Result<ConfigSource> {
    Ok(match &cli.config {
        Some(path) if !path.as_os_str().is_empty() => ConfigSource {
            path: std::path::absolute(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
            explicit: true,
        },
        _ => ConfigSource {
            path: Home::resolve(cli.home.as_deref())?.default_config_path(),
            explicit: false,
        },
    })
}

pub fn load_config(cli: &Cli) -> Result<LoadedConfig> {
    Ok(config::load(&config_source(cli)?)?)
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

async fn status(cli: &Cli, json: bool) -> Result<ExitCode> {
    let home = Home::resolve(cli.home.as_deref())?;
    let report = control::status(&home).await?;
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
    if let Some(failed) = &r.reload_failed {
        println!(
            "  config:     RELOAD FAILED at {}: {}; the previous config stays in effect until a reload succeeds",
            failed.at, failed.error
        );
    }
}

/// `keyward daemon reload`: the daemon reads its config again and says
/// what it could not apply without a restart.
async fn reload(cli: &Cli, json: bool) -> Result<ExitCode> {
    let answer: keyward_api::ReloadResponse = client(cli)?
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

/// A client for this home's daemon.
pub fn client(cli: &Cli) -> Result<keyward_api::Client> {
    let home = Home::resolve(cli.home.as_deref())?;
    Ok(keyward_api::Client::new(home.socket_path()))
}

/// A client for a daemon that runs: starts one (detached) if none does.
pub async fn ensure_daemon(cli: &Cli) -> Result<keyward_api::Client> {
    let home = Home::resolve(cli.home.as_deref())?;
    // A running daemon is used as it is: its config is its own business
    // (a broken file on disk must not stop clients of a working daemon).
    let running = client(cli)?;
    match running.health().await {
        Ok(_) => return Ok(running),
        // A daemon answered, and refused (a peer it does not serve): that
        // answer is the caller's, not a reason to start another.
        Err(e @ keyward_api::ClientError::Api { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    // A socket named by KEYWARD_SOCKET belongs to a daemon managed
    // elsewhere (a system service): use it, never start one in its place.
    if home.socket_elsewhere() {
        return Err(ControlError::NotRunning {
            detail: format!(
                "nothing answers on {} (KEYWARD_SOCKET); start that daemon (e.g. \
                 `systemctl start keyward`)",
                home.socket_path().display()
            ),
            home: home.root().to_owned(),
        }
        .into());
    }
    let (exe, args) = daemon_command(cli, None, false)?;
    if let Some(pid) = control::ensure_running(&home, &exe, args, DETACH_READY_TIMEOUT).await? {
        eprintln!("keyward: started the daemon (pid {pid})");
    }
    client(cli)
}

async fn start_detached(cli: &Cli, idle: &IdleExitArg, json: bool) -> Result<ExitCode> {
    let home = Home::resolve(cli.home.as_deref())?;
    let pid = spawn_daemon(cli, idle).await?;
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

/// Starts the daemon detached with this CLI's home, config and log format.
async fn spawn_daemon(cli: &Cli, idle: &IdleExitArg) -> Result<u32> {
    let home = Home::resolve(cli.home.as_deref())?;
    let (exe, args) = daemon_command(cli, idle.idle_exit.map(|i| i.0), idle.require_runner_auth)?;
    Ok(control::start_detached(&home, &exe, args, DETACH_READY_TIMEOUT).await?)
}

/// The executable and arguments that run this CLI's daemon in the
/// foreground: same home, config and log format.
fn daemon_command(
    cli: &Cli,
    idle_exit: Option<Option<Duration>>,
    require_runner_auth: bool,
) -> Result<(std::path::PathBuf, Vec<OsString>)> {
    let home = Home::resolve(cli.home.as_deref())?;
    // Validate here too, so a bad config fails fast with exit 64 and no
    // process is spawned.
    let source = config_source(cli)?;
    let loaded = config::load(&source)?;
    if require_runner_auth {
        runner_auth_verifiable(&loaded)?;
    }

    let mut args: Vec<OsString> = vec!["--home".into(), home.root().into()];
    if source.explicit {
        args.extend(["--config".into(), source.path.clone().into()]);
    }
    args.extend(["--log-format".into(), cli.log_format.as_arg().into()]);
    args.extend(["daemon".into(), "start".into()]);
    if require_runner_auth {
        args.push("--require-runner-auth".into());
    }
    if let Some(idle) = idle_exit {
        args.extend([
            "--idle-exit".into(),
            config::format_duration_or_off(idle).into(),
        ]);
    }
    let exe = std::env::current_exe().context("cannot find the keyward executable")?;
    Ok((exe, args))
}

/// For `--require-runner-auth`: the config must say how to verify runner
/// auth, else every evaluation would be blocked.
fn runner_auth_verifiable(loaded: &LoadedConfig) -> Result<(), config::ConfigError> {
    if loaded.identity.configured() {
        return Ok(());
    }
    Err(config::ConfigError::Invalid {
        path: loaded.source.path.clone(),
        key: Some("auth".to_owned()),
        message: "--require-runner-auth needs a way to verify runner auth: set \
                  auth.runner_hmac_key_file (or KEYWARD_RUNNER_AUTH_HMAC_KEY) or [auth.oidc]"
            .to_owned(),
    })
}

/// Stops the daemon; with `tolerate_not_running` (restart) a daemon that is
/// not running is fine.
async fn stop(cli: &Cli, args: &StopArgs, tolerate_not_running: bool) -> Result<ExitCode> {
    let home = Home::resolve(cli.home.as_deref())?;
    let (pid, how) = match control::stop(&home, args.timeout, args.force).await {
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
