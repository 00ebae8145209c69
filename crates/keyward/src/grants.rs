//! `keyward grant list` and `keyward grant add`.

use std::process::ExitCode;

use anyhow::Result;
use hyper::Method;
use keyward_api::{ClientError, GrantList, ReloadResponse};
use keyward_config::edit::{EditError, add_grant, remove_grant};
use keyward_config::grants::{BasicConfig, GrantConfig, InjectConfig};
use keyward_config::{ConfigError, ConfigSource};
use serde_json::json;

use crate::cli::{GrantAddArgs, GrantRmArgs};
use crate::context::Context;

pub async fn list(ctx: &Context, json: bool) -> Result<ExitCode> {
    let list: GrantList = ctx
        .ensure_daemon()
        .await?
        .call(Method::GET, "/v1/grants", None::<&()>)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for g in &list.grants {
        let inject = match g.inject.kind.as_str() {
            "header" => format!(
                "header {}: {}",
                g.inject.header.as_deref().unwrap_or_default(),
                g.inject.format.as_deref().unwrap_or_default()
            ),
            "basic" => format!(
                "basic auth as {}",
                g.inject.username.as_deref().unwrap_or_default()
            ),
            "query" => format!("query ?{}=", g.inject.param.as_deref().unwrap_or_default()),
            other => other.to_owned(),
        };
        let status = match &g.message {
            Some(why) => format!("{}: {why}", g.status),
            None => g.status.clone(),
        };
        println!("{} ({})", g.name, g.source);
        println!("  secret:  {}", g.secret);
        println!("  hosts:   {}", g.hosts.join(", "));
        println!("  inject:  {inject}");
        if let Some(var) = &g.placeholder_env {
            let bodies = if g.substitute_body {
                ", swapped in bodies too"
            } else {
                ""
            };
            println!("  env:     {var} (placeholder{bodies})");
        }
        if g.plaintext {
            println!("  plain:   may go over plain HTTP");
        }
        println!("  status:  {status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A flag of `grant add` that cannot be right, in the user's words (a
/// usage error, exit 2: nothing is written).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GrantFlagError(String);

/// Checks what `grant add` was given before the config file is touched,
/// naming the flag at fault.
fn check_add_flags(args: &GrantAddArgs) -> Result<(), GrantFlagError> {
    if keyward_vault::validate_name(&args.name).is_err() {
        return Err(GrantFlagError(format!(
            "{:?} is not a grant name: 1-64 of a-z 0-9 _ . - starting with a letter or digit \
             (e.g. my-api)",
            args.name
        )));
    }
    if let Some(preset) = keyward_config::grants::presets().get(args.name.as_str())
        && !args.replace
    {
        return Err(GrantFlagError(format!(
            "{} is a built-in preset (hosts {}); pass --replace to put your table in its place \
             (its hosts, injection and placeholder variable then come from your flags only), \
             or choose another name",
            args.name,
            preset.hosts.clone().unwrap_or_default().join(", ")
        )));
    }
    Ok(())
}

pub async fn add(ctx: &Context, source: &ConfigSource, args: &GrantAddArgs) -> Result<ExitCode> {
    check_add_flags(args)?;
    let grant = GrantConfig {
        preset: None,
        secret: Some(args.secret.clone()),
        hosts: Some(args.hosts.clone()),
        inject: Some(InjectConfig {
            header: args.header.clone(),
            format: args.format.clone(),
            basic: args.basic.clone().map(|username| BasicConfig { username }),
            query: args.query.clone(),
        }),
        placeholder_env: args.placeholder_env.clone(),
        plaintext: args.plaintext.then_some(true),
        substitute_body: args.substitute_body.then_some(true),
        base_url_env: args.base_url_env.clone(),
        base_url_path: args.base_url_path.clone(),
        require_runner: None,
        public_suffix: args.public_suffix.then_some(true),
    };
    if !source.explicit {
        ctx.home()?.ensure_private()?;
    }
    // Asked before the file is touched: a caller the daemon refuses (a
    // process inside a run) changes nothing.
    let daemon = ctx.client()?;
    let reloaded = edit_then_reload(&daemon, || {
        add_grant(&source.path, &args.name, &grant, args.replace)
    })
    .await
    .map_err(|e| blame_flag(e, &args.name))?;
    if args.json.json {
        println!(
            "{}",
            json!({"grant": args.name, "config": source.path, "daemon_reloaded": reloaded})
        );
    } else {
        println!("added grant {} to {}", args.name, source.path.display());
        if reloaded {
            println!("the daemon reloaded its config");
        } else {
            println!("the daemon is not running; it will use the grant when it starts");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The flag of `grant add` that wrote the key a refused edit names, so the
/// user reads "--host *.com: ..." rather than "invalid config file ... at
/// grants.NAME.hosts" (the file itself was fine; nothing was written).
fn flag_for_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "secret" => "--secret",
        "hosts" => "--host",
        "inject" => "--header, --basic or --query",
        "inject.header" => "--header",
        "inject.format" => "--format",
        "inject.basic" | "inject.basic.username" => "--basic",
        "inject.query" => "--query",
        "placeholder_env" => "--placeholder-env",
        "substitute_body" => "--substitute-body",
        "base_url_env" => "--base-url-env",
        "base_url_path" => "--base-url-path",
        "plaintext" => "--plaintext",
        "public_suffix" => "--public-suffix",
        _ => return None,
    })
}

/// Turns a refusal of the new grant's own table into a flag error (exit 2);
/// anything else (a file that was already broken, a write failure) stays
/// as it was.
fn blame_flag(err: anyhow::Error, name: &str) -> anyhow::Error {
    let Some(EditError::Config(ConfigError::Invalid {
        key: Some(key),
        message,
        ..
    })) = err.downcast_ref::<EditError>()
    else {
        return err;
    };
    let Some(field) = key.strip_prefix(&format!("grants.{name}.")) else {
        return err;
    };
    // Index suffixes (`hosts[1]`) and nested keys narrow to the flag.
    let field = field.split('[').next().unwrap_or(field);
    match flag_for_key(field) {
        Some(flag) => GrantFlagError(format!("{flag}: {message}")).into(),
        None => err,
    }
}

pub async fn remove(ctx: &Context, source: &ConfigSource, args: &GrantRmArgs) -> Result<ExitCode> {
    // Asked before the file is touched: a caller the daemon refuses (a
    // process inside a run) changes nothing.
    let daemon = ctx.client()?;
    let reloaded = edit_then_reload(&daemon, || remove_grant(&source.path, &args.name)).await?;
    if args.json.json {
        println!(
            "{}",
            json!({"removed": args.name, "config": source.path, "daemon_reloaded": reloaded})
        );
    } else {
        println!("removed grant {} from {}", args.name, source.path.display());
        if reloaded {
            println!(
                "the daemon reloaded its config; runs that hold the grant keep it until they end"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Edits the config file, then has a running daemon reload it; says
/// whether it did. The daemon is asked first, so a caller it refuses (a
/// process inside a run) changes nothing.
async fn edit_then_reload(
    daemon: &keyward_api::Client,
    edit: impl FnOnce() -> Result<(), keyward_config::edit::EditError>,
) -> Result<bool> {
    match daemon
        .call::<(), serde_json::Value>(Method::GET, "/v1/grants", None)
        .await
    {
        Ok(_) | Err(ClientError::NotRunning { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    edit()?;
    match daemon
        .call::<(), ReloadResponse>(Method::POST, "/v1/reload", None)
        .await
    {
        Ok(_) => Ok(true),
        Err(ClientError::NotRunning { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
