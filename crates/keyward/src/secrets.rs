//! `keyward vault …` and `keyward secret …`: read values and passphrases
//! without echo and without argv, call the daemon, print metadata only.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use hyper::Method;
use keyward_api::{
    Client, ClientError, InitVaultRequest, KeyMode, RollbackRequest, SecretInfo, SecretList,
    SetSecretRequest, SnapshotList, UnsealRequest, VaultState, VaultStatus,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::{SecretCommand, VaultCommand};
use crate::context::Context;

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn vault(ctx: &Context, cmd: &VaultCommand) -> Result<ExitCode> {
    match cmd {
        VaultCommand::Init { passphrase, json } => {
            let client = ctx.ensure_daemon().await?;
            let req = if *passphrase {
                InitVaultRequest {
                    mode: KeyMode::Passphrase,
                    passphrase: Some(read_new_passphrase()?.to_string()),
                }
            } else {
                InitVaultRequest::default()
            };
            let status: VaultStatus = client
                .call(Method::POST, "/v1/vault/init", Some(&req))
                .await?;
            output_status(&status, json.json, "vault initialized")?;
        }
        VaultCommand::Status(flags) => {
            let status = vault_status(&ctx.ensure_daemon().await?).await?;
            output_status(&status, flags.json, "")?;
        }
        VaultCommand::Unseal(flags) => {
            let client = ctx.ensure_daemon().await?;
            let current = vault_status(&client).await?;
            let passphrase = match current.mode {
                Some(KeyMode::Passphrase) => {
                    Some(read_passphrase("Vault passphrase: ")?.to_string())
                }
                _ => None,
            };
            let status: VaultStatus = client
                .call(
                    Method::POST,
                    "/v1/vault/unseal",
                    Some(&UnsealRequest { passphrase }),
                )
                .await?;
            output_status(&status, flags.json, "vault unsealed")?;
        }
        VaultCommand::Seal(flags) => {
            // A daemon that does not run holds no key: there is nothing to
            // seal, and starting one to seal it would unseal a key-file
            // vault first.
            match ctx
                .client()?
                .call::<(), VaultStatus>(Method::POST, "/v1/vault/seal", None)
                .await
            {
                Ok(status) => output_status(&status, flags.json, "vault sealed")?,
                Err(keyward_api::ClientError::NotRunning { .. }) => {
                    if flags.json {
                        println!(
                            "{}",
                            serde_json::json!({"sealed": true, "daemon_running": false})
                        );
                    } else {
                        println!("the daemon is not running: no key is in memory, nothing to seal");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        VaultCommand::History(flags) => {
            let list: SnapshotList = ctx
                .ensure_daemon()
                .await?
                .call(Method::GET, "/v1/vault/history", None::<&()>)
                .await?;
            if flags.json {
                print_json(&list)?;
            } else if list.snapshots.is_empty() {
                println!("no snapshots (the vault is not initialized)");
            } else {
                let last = list.snapshots.len() - 1;
                for (i, s) in list.snapshots.iter().enumerate() {
                    let mark = if i == last { "  (current)" } else { "" };
                    println!("{}  {:>6} B{mark}", s.name, s.size);
                }
            }
        }
        VaultCommand::Rollback { snapshot, json } => {
            let req = RollbackRequest {
                snapshot: snapshot.clone(),
            };
            let status: VaultStatus = ctx
                .ensure_daemon()
                .await?
                .call(Method::POST, "/v1/vault/rollback", Some(&req))
                .await?;
            let msg = format!(
                "rolled back: the content of {snapshot} is current again, as {}",
                status.current.as_deref().unwrap_or("?")
            );
            output_status(&status, json.json, &msg)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn vault_status(client: &Client) -> Result<VaultStatus> {
    Ok(client.call(Method::GET, "/v1/vault", None::<&()>).await?)
}

fn output_status(status: &VaultStatus, json: bool, headline: &str) -> Result<()> {
    if json {
        return print_json(status);
    }
    if !headline.is_empty() {
        println!("{headline}");
    }
    println!("state:     {}", status.state.as_str());
    if let Some(mode) = status.mode {
        println!("mode:      {}", mode.as_str());
    }
    println!("snapshots: {}", status.snapshots);
    if let Some(current) = &status.current {
        println!("current:   {current}");
    }
    if let Some(id) = &status.vault_id {
        println!("vault id:  {id}");
    }
    if let Some(n) = status.secrets {
        println!("secrets:   {n}");
    }
    if let Some(error) = &status.error {
        println!("error:     {error}");
    }
    Ok(())
}

pub async fn secret(ctx: &Context, cmd: &SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::Set {
            name,
            description,
            from_file,
            from_env,
            json,
        } => {
            // Check the name before reading a value or starting anything.
            keyward_vault::validate_name(name)?;
            let value = read_value(name, from_file.as_deref(), from_env.as_deref())?;
            let client = ctx.ensure_daemon().await?;
            if vault_status(&client).await?.state == VaultState::Uninitialized {
                let init: Result<VaultStatus, _> = client
                    .call(
                        Method::POST,
                        "/v1/vault/init",
                        Some(&InitVaultRequest::default()),
                    )
                    .await;
                match init {
                    Ok(_) => eprintln!("keyward: created a key-file vault in the home"),
                    // A concurrent `secret set` created it first: fine.
                    Err(ClientError::Api { code, .. }) if code == "vault_initialized" => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let req = SetSecretRequest {
                value: value.to_string(),
                description: description.clone(),
            };
            let info: SecretInfo = client
                .call(Method::PUT, &format!("/v1/secrets/{name}"), Some(&req))
                .await?;
            drop(req);
            if json.json {
                print_json(&info)?;
            } else {
                println!(
                    "stored secret {} (fingerprint {})",
                    info.name, info.fingerprint
                );
            }
        }
        SecretCommand::List(flags) => {
            let listed = ctx
                .ensure_daemon()
                .await?
                .call::<(), SecretList>(Method::GET, "/v1/secrets", None)
                .await;
            let list = match listed {
                Ok(list) => list,
                // No vault yet: no secrets, and nothing wrong.
                Err(keyward_api::ClientError::Api { code, .. })
                    if code == "vault_uninitialized" =>
                {
                    if flags.json {
                        println!(
                            "{}",
                            serde_json::json!({"secrets": [], "vault": "uninitialized"})
                        );
                    } else {
                        println!("no secrets (no vault yet: `keyward secret set NAME` makes one)");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            };
            if flags.json {
                print_json(&list)?;
            } else if list.secrets.is_empty() {
                println!("no secrets");
            } else {
                let width = list
                    .secrets
                    .iter()
                    .map(|s| s.name.len())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                println!(
                    "{:width$}  FINGERPRINT  UPDATED               DESCRIPTION",
                    "NAME"
                );
                for s in &list.secrets {
                    println!(
                        "{:width$}  {:11}  {:20}  {}",
                        s.name, s.fingerprint, s.updated_at, s.description
                    );
                }
            }
        }
        SecretCommand::Rm { name, json } => {
            keyward_vault::validate_name(name)?;
            let _: serde_json::Value = ctx
                .ensure_daemon()
                .await?
                .call(Method::DELETE, &format!("/v1/secrets/{name}"), None::<&()>)
                .await?;
            if json.json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("removed secret {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The value from a file, an environment variable, a no-echo prompt or
/// stdin. One trailing newline is dropped; an empty value is refused.
fn read_value(
    name: &str,
    from_file: Option<&std::path::Path>,
    from_env: Option<&str>,
) -> Result<Zeroizing<String>> {
    let mut value = if let Some(path) = from_file {
        Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the value from {}", path.display()))?,
        )
    } else if let Some(var) = from_env {
        Zeroizing::new(std::env::var(var).with_context(|| {
            format!("cannot read the value from the environment variable {var}")
        })?)
    } else if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password(format!("Value for secret {name}: "))
                .context("cannot read the value from the terminal")?,
        )
    } else {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the value from stdin")?;
        text
    };
    strip_one_newline(&mut value);
    if value.is_empty() {
        bail!("the value for secret {name} is empty; refusing to store an empty secret");
    }
    if value.len() > keyward_api::MAX_SECRET_BYTES {
        bail!(
            "the value for secret {name} is {} bytes; a secret is at most {} KiB (keep a large \
             file out of the vault and grant it as file:/path); nothing was stored",
            value.len(),
            keyward_api::MAX_SECRET_BYTES / 1024
        );
    }
    Ok(value)
}

fn strip_one_newline(value: &mut String) {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
}

/// A passphrase: no-echo prompt on a terminal, else the first line of stdin.
fn read_passphrase(prompt: &str) -> Result<Zeroizing<String>> {
    let mut pass = if std::io::stdin().is_terminal() {
        Zeroizing::new(rpassword::prompt_password(prompt).context("cannot read the passphrase")?)
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the passphrase from stdin")?;
        line
    };
    strip_one_newline(&mut pass);
    if pass.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(pass)
}

fn read_new_passphrase() -> Result<Zeroizing<String>> {
    let first = read_passphrase("New vault passphrase: ")?;
    // Warned, not refused: the passphrase is the user's to choose, and
    // the vault key it wraps is only as strong as it.
    let length = first.chars().count();
    if length < 12 {
        eprintln!(
            "keyward: warning: a passphrase of {length} characters is weak against guessing; \
             12 or more (a few random words) is far stronger"
        );
    }
    if std::io::stdin().is_terminal() {
        let again = read_passphrase("Repeat the passphrase: ")?;
        if *first != *again {
            bail!("the passphrases do not match; nothing was changed");
        }
    }
    Ok(first)
}
