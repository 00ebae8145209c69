//! `keyward demo`: the main job end to end on embedded defaults, in a
//! temporary home, with every claim checked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::control;
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyward_api::{InitVaultRequest, SecretInfo, SetSecretRequest, VaultStatus};
use keyward_config::home::Home;
use sha2::{Digest, Sha256};

use crate::context::Context;

/// A short, non-reversible tag of a value, to show "the same secret"
/// without showing it.
fn tag(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..6])
}

/// A local HTTPS service with its own test CA; records the Authorization
/// header of each request and echoes it back.
async fn start_service(dir: &Path) -> Result<(u16, PathBuf, Arc<Mutex<Vec<String>>>)> {
    let identity = keyward_proxy::ServiceIdentity::new("localhost")?;
    let ca_path = dir.join("service-ca.pem");
    std::fs::write(&ca_path, &identity.ca_pem)?;
    let tls = identity.server_config(&[b"http/1.1"])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(auth.clone());
                    let body = format!("{{\"you_sent\":\"{auth}\"}}\n");
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok((port, ca_path, seen))
}

pub async fn demo(ctx: &Context) -> Result<ExitCode> {
    let client_tool = ["curl", "python3"]
        .into_iter()
        .find(|t| {
            std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context("the demo needs curl or python3 as its client")?;
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let dir = PathBuf::from("/tmp").join(format!("keyward-demo-{nonce}"));
    std::fs::create_dir_all(&dir)?;
    let outcome = run_demo(ctx, &dir, client_tool).await;
    let home = Home::at(dir.join("home"));
    let _ = control::stop(&home, std::time::Duration::from_secs(10), true).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run_demo(ctx: &Context, dir: &Path, client_tool: &str) -> Result<ExitCode> {
    let (port, service_ca, seen) = start_service(dir).await?;
    let home_path = dir.join("home");
    Home::at(&home_path).ensure_private()?;
    std::fs::write(
        home_path.join("keyward.toml"),
        format!(
            "[proxy]\nupstream_ca = [\"{}\"]\n\n[grants.demo]\nsecret = \"vault:demo-token\"\nhosts = [\"localhost:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\nplaceholder_env = \"DEMO_TOKEN\"\n",
            service_ca.display()
        ),
    )?;
    let demo_ctx = Context::for_home(home_path.clone(), ctx.log_format());
    let client = demo_ctx.ensure_daemon().await?;
    let _: VaultStatus = client
        .call(
            Method::POST,
            "/v1/vault/init",
            Some(&InitVaultRequest::default()),
        )
        .await?;
    let mut raw = [0u8; 18];
    rand_fill(&mut raw)?;
    let secret = format!("demo-{}", hex::encode(raw));
    let stored: SecretInfo = client
        .call(
            Method::PUT,
            "/v1/secrets/demo-token",
            Some(&SetSecretRequest {
                value: secret.clone(),
                description: Some("keyward demo".to_owned()),
            }),
        )
        .await?;

    // The client works in a directory of its own: sandboxed, it could not
    // write next to the keyward home.
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let env_file = work.join("child-env.txt");
    let url = format!("https://localhost:{port}/user");
    let key_file = home_path.join("vault").join("identity.txt");
    let fetch = match client_tool {
        "curl" => format!("curl -sS {url}"),
        _ => format!(
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{url}\").read().decode())'"
        ),
    };
    let script = format!(
        "env > {e}; cat {k} >/dev/null 2>&1 && echo VAULT-KEY-READ >&2; {fetch}",
        e = env_file.display(),
        k = key_file.display()
    );
    // Sandboxed where the kernel can enforce it (Landlock ABI 6+).
    let sandboxed = keyward_sys::landlock_abi() >= 6;
    let exe = std::env::current_exe()?;
    let mut run_args = vec!["run", "--grant", "demo"];
    if sandboxed {
        run_args.push("--sandbox");
    }
    let child = tokio::process::Command::new(exe)
        .arg("--home")
        .arg(&home_path)
        .args(&run_args)
        .args(["--", "sh", "-c", &script])
        .env_remove("KEYWARD_CONFIG")
        .current_dir(&work)
        .output()
        .await?;
    let child_err = String::from_utf8_lossy(&child.stderr);
    let sandbox_line = child_err
        .lines()
        .find_map(|l| l.strip_prefix("sandbox: landlock"))
        .map(|l| format!("landlock{l}"));
    let child_out = String::from_utf8_lossy(&child.stdout).trim().to_owned();
    let child_env = std::fs::read_to_string(&env_file).unwrap_or_default();
    let placeholder = child_env
        .lines()
        .find_map(|l| l.strip_prefix("DEMO_TOKEN="))
        .unwrap_or("")
        .to_owned();
    let proxy_line = child_env
        .lines()
        .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
        .map(|u| match u.split_once('@') {
            Some((_, host)) => format!("http://run:<run token>@{host}"),
            None => u.to_owned(),
        })
        .unwrap_or_default();
    let received = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let received_secret = received
        .first()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    // The request's log line follows its evidence record onto disk, which
    // may come a few milliseconds after the response.
    let mut log = String::new();
    let mut event = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(home_path.join("daemon.log")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("egress") && l.contains("injected=\"demo\""))
        {
            event = line.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let audit_dir = home_path.join("audit");
    let evidence = keyward_evidence::verify_dir(&audit_dir, None).ok();
    let evidence_has_secret = std::fs::read_dir(&audit_dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path())
                .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
        });
    let checks = [
        ("the client ran and succeeded", child.status.success()),
        (
            if sandboxed {
                "the sandboxed client could not read the vault key"
            } else {
                "no sandbox on this kernel, so the vault key check is skipped"
            },
            !sandboxed || (sandbox_line.is_some() && !child_err.contains("VAULT-KEY-READ")),
        ),
        (
            "the service received the real secret",
            !received_secret.is_empty() && received_secret == secret,
        ),
        (
            "the child's environment held only a placeholder",
            placeholder.starts_with("kw_ph_") && !child_env.contains(&secret),
        ),
        (
            "the echo reached the child scrubbed",
            child_out.contains(&placeholder) && !child_out.contains(&secret),
        ),
        (
            "one egress event names the grant, not the secret",
            !event.is_empty() && !log.contains(&secret),
        ),
        (
            "the evidence log verifies and holds no secret",
            evidence.as_ref().is_some_and(|r| r.valid && r.records > 0) && !evidence_has_secret,
        ),
    ];
    println!(
        "keyward demo: a local HTTPS service, a demo secret, `keyward run{} --grant demo -- {client_tool}`\n",
        if sandboxed { " --sandbox" } else { "" }
    );
    println!(
        "  secret stored        vault:demo-token  (vault fingerprint {}, tag {})",
        stored.fingerprint,
        tag(&secret)
    );
    println!(
        "  service received     Authorization: Bearer <tag {}>",
        tag(&received_secret)
    );
    println!("  child's environment  DEMO_TOKEN={placeholder}");
    println!("                       HTTPS_PROXY={proxy_line}");
    println!("  child saw in reply   {child_out}");
    match &sandbox_line {
        Some(line) => println!("  client sandboxed     {line}"),
        None => println!(
            "  client sandboxed     no: this kernel lacks Landlock ABI 6 (files, TCP, signals)"
        ),
    }
    println!(
        "  request event        {}",
        event.split("egress ").nth(1).unwrap_or(&event)
    );
    if let Some(r) = &evidence {
        println!(
            "  evidence log         {} records, seq {}..{}, chain {}",
            r.records,
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0),
            if r.valid { "verified" } else { "BROKEN" }
        );
    }
    println!();
    let mut all = true;
    for (what, held) in checks {
        println!("  [{}] {what}", if held { "ok" } else { "FAILED" });
        all &= held;
    }
    if !all {
        bail!("the demo failed a check; the daemon log was:\n{log}");
    }
    println!("\nevery check held.");
    Ok(ExitCode::SUCCESS)
}

fn rand_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
