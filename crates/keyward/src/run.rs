//! `keyward run`: register a run, start the program with the proxy and CA
//! trust in its environment (and no secret), forward signals, unregister,
//! and exit as the program did.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use hyper::Method;
use keyward_api::{CreateRunRequest, Network, PatchRunRequest, RunCreated, RunInfo};
use keyward_sys::Signal;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{CaCommand, CaFormat, Cli, NetworkArg, RunArgs};
use crate::commands::ensure_daemon;

pub async fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let client = ensure_daemon(cli).await?;
    // Hashes only: the daemon says which variables hold a run secret
    // without either side showing a value.
    let env_sha256: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            Some((k, hex::encode(Sha256::digest(v.as_bytes()))))
        })
        .collect();
    let req = CreateRunRequest {
        grants: args.grants.clone(),
        allow: args.allow.clone(),
        network: match args.network {
            NetworkArg::Permissive => Network::Permissive,
            NetworkArg::Strict => Network::Strict,
        },
        pid: None,
        label: args.label.clone(),
        policy: args
            .policy
            .as_deref()
            .map(|p| {
                std::path::absolute(p)
                    .map(|p| p.display().to_string())
                    .with_context(|| format!("cannot resolve {}", p.display()))
            })
            .transpose()?,
        env_sha256,
    };
    let created: RunCreated = client.call(Method::POST, "/v1/runs", Some(&req)).await?;

    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for var in &created.drop_env {
        cmd.env_remove(var);
    }
    cmd.envs(&created.env).envs(&created.placeholders);
    // Caught from before the program starts: a signal that arrived while
    // it was being registered would otherwise kill this process (default
    // action) and leave the program running without its wrapper.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = unregister(&client, &created.run_id).await;
            bail!(
                "cannot start {}: {e}",
                std::path::Path::new(&args.command[0]).display()
            );
        }
    };
    let pid = child
        .id()
        .context("the program exited before it could be tracked")?;
    let _: RunInfo = client
        .call(
            Method::PATCH,
            &format!("/v1/runs/{}", created.run_id),
            Some(&PatchRunRequest { pid: Some(pid) }),
        )
        .await?;

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for the program")?,
            _ = sigint.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Int); }
            _ = sigterm.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Term); }
            _ = sighup.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Hup); }
        }
    };
    // The daemon also removes it when the pid dies; say so explicitly.
    let _ = unregister(&client, &created.run_id).await;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        (None, None) => ExitCode::FAILURE,
    })
}

/// `keyward ca path` / `keyward ca export`.
pub async fn ca(cli: &Cli, cmd: &CaCommand) -> Result<ExitCode> {
    let client = ensure_daemon(cli).await?;
    let home = keyward_daemon::home::Home::resolve(cli.home.as_deref())?;
    let public = home.ca_dir().join("public");
    let cert = public.join("ca.pem");
    let bundle = public.join("bundle.pem");
    match cmd {
        CaCommand::Path(flags) if flags.json => {
            println!("{}", serde_json::json!({"ca": cert, "bundle": bundle}))
        }
        CaCommand::Path(_) => {
            println!("{}", cert.display());
            println!("{}", bundle.display());
        }
        CaCommand::Rotate(flags) => {
            let v: serde_json::Value = client
                .call(Method::POST, "/v1/ca/rotate", None::<&()>)
                .await?;
            if flags.json {
                println!("{v}");
            } else {
                println!("rotated the local CA: {}", cert.display());
                println!(
                    "the previous CA stays in {} until the next rotation",
                    bundle.display()
                );
            }
        }
        CaCommand::Export { format } => {
            let pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            match format {
                CaFormat::Pem => print!("{pem}"),
                CaFormat::Der => {
                    use rustls_pki_types::pem::PemObject;
                    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                        .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
                    use std::io::Write;
                    std::io::stdout().write_all(der.as_ref())?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn unregister(client: &keyward_api::Client, run_id: &str) -> Result<()> {
    let _: Result<RunInfo, _> = client
        .call(Method::DELETE, &format!("/v1/runs/{run_id}"), None::<&()>)
        .await;
    Ok(())
}
