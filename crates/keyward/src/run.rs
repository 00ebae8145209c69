//! `keyward run`: register a run, start the program with the proxy and CA
//! trust in its environment (and no secret), forward signals, unregister,
//! and exit as the program did.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hyper::Method;
use keyward_api::{CreateRunRequest, Network, RunCreated, RunInfo};
use keyward_runs::sandbox::SandboxRequest;
use keyward_sys::Signal;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{BrokerArg, CaCommand, CaFormat, NetworkArg, RunArgs, SandboxArg};
use crate::context::Context;

/// Variables never passed to the program: evidence and runner-auth keys,
/// and the CI providers' OIDC token endpoints with their request tokens.
const IDENTITY_VARS: &[&str] = &[
    keyward_evidence::HMAC_KEY_ENV,
    "KEYWARD_RUNNER_AUTH_HMAC_KEY",
    "KEYWARD_RUNNER_HMAC_KEY",
    "KEYWARD_ID_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "SYSTEM_ACCESSTOKEN",
    "SYSTEM_OIDCREQUESTURI",
];

/// The program's broker descriptor (`KEYWARD_BROKER_FD`).
const BROKER_FD: i32 = 3;

/// The daemon holds a `--verbose` follower's question up to 25 s when
/// nothing happens; this is the follower's own limit per question.
const PROBLEMS_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Makes the run's broker: a socketpair whose daemon end goes to the
/// daemon now; the other end is returned for the program.
async fn attach_broker(
    client: &keyward_api::Client,
    created: &RunCreated,
) -> Result<std::os::fd::OwnedFd> {
    let (program_end, daemon_end) =
        keyward_sys::seqpacket_pair().context("cannot make the broker's socketpair")?;
    let socket = client.socket().to_owned();
    let (run_id, token) = (created.run_id.clone(), created.token.clone());
    tokio::task::spawn_blocking(move || {
        keyward_api::broker::attach(&socket, &run_id, &token, daemon_end)
    })
    .await?
    .context("cannot hand the fd broker to the daemon")?;
    Ok(program_end)
}

pub async fn run(ctx: &Context, args: &RunArgs) -> Result<ExitCode> {
    let client = ctx.ensure_daemon().await?;
    // A daemon this process just started is its child; it is not one of
    // the program's leftovers.
    let daemon_pid = client.health().await.ok().map(|h| h.pid);
    let confinement = plan_confinement(ctx, args, &client).await?;
    // Orphans of the program (double fork, `setsid -f`) come back to this
    // process instead of pid 1, so they stay inside the run's ancestry.
    keyward_sys::become_child_subreaper().context("cannot become a child subreaper")?;
    // The program may not read this process's memory (or, without
    // Landlock, attach to it).
    let _ = keyward_sys::make_non_dumpable();
    // Hashes only: the daemon says which variables hold a run secret
    // without either side showing a value.
    let env_sha256: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            Some((k, hex::encode(Sha256::digest(v.as_bytes()))))
        })
        .collect();
    // Registered before the program exists and tied to this process, so
    // there is no moment in which the program runs outside its run.
    let req = CreateRunRequest {
        grants: args.grants.clone(),
        allow: args.allow.clone(),
        network: match args.network {
            NetworkArg::Permissive => Network::Permissive,
            NetworkArg::Strict => Network::Strict,
        },
        pid: Some(std::process::id()),
        label: args.label.clone(),
        policy: args
            .policy
            .as_deref()
            .map(|p| {
                // `builtin:agent-baseline` names the built-in pack, not a file.
                if keyward_policy::builtin_name(p).is_some() {
                    return Ok(p.display().to_string());
                }
                std::path::absolute(p)
                    .map(|p| p.display().to_string())
                    .with_context(|| format!("cannot resolve {}", p.display()))
            })
            .transpose()?,
        env_sha256,
        confinement: Some(confinement.summary.clone()),
        broker: args.broker.is_some(),
        base_url: args.base_url,
        runner_auth: crate::runner_auth::load(&args.runner_auth)?.unwrap_or_default(),
        private_tmp: confinement
            .private_tmp
            .as_ref()
            .map(|p| p.display().to_string()),
    };
    let created: RunCreated = match client.call(Method::POST, "/v1/runs", Some(&req)).await {
        Ok(created) => created,
        Err(e) => {
            confinement.cleanup();
            return Err(e.into());
        }
    };

    let broker = match args.broker {
        Some(BrokerArg::Fd) => match attach_broker(&client, &created).await {
            Ok(fd) => Some(fd),
            Err(e) => {
                unregister(&client, &created.run_id).await;
                confinement.cleanup();
                return Err(e);
            }
        },
        None => None,
    };

    // Runs beside the program (on this thread's runtime, while it waits)
    // and ends before the run is unregistered.
    let follower = args.verbose.then(|| {
        let client = client.clone().with_timeout(PROBLEMS_CALL_TIMEOUT);
        tokio::spawn(follow_problems(client, created.run_id.clone()))
    });
    let _stop_follower = AbortOnDrop(follower);

    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for var in &created.drop_env {
        cmd.env_remove(var);
    }
    // What signs evidence or proves a CI identity stays out of the
    // program: a CI job may hand the daemon its keys this way, and a
    // program holding them (or the provider's token endpoint and its
    // request token) could sign records or mint any identity for itself.
    for var in IDENTITY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(&created.env).envs(&created.placeholders);
    if let Some(tmp) = &confinement.tmpdir {
        cmd.env("TMPDIR", tmp);
    }
    // The program dies with this process: `run` is called on the thread
    // that blocks on it, which lives until this process exits.
    keyward_sys::kill_with_parent_on_spawn(&mut cmd);
    let Confinement {
        sandbox,
        private_tmp,
        listeners,
        ..
    } = confinement;
    let mut sandbox = sandbox;
    if args.sandbox.is_some() {
        sandbox.isolate();
    }
    keyward_sys::sandbox_on_spawn(&mut cmd, sandbox);
    let terminal = crate::run_pty::PrivateTerminal::for_run(args).and_then(|terminal| {
        if let Some(terminal) = &terminal {
            terminal.attach(&mut cmd)?;
        } else if args.sandbox.is_some() && !args.no_pty {
            // No terminal of its own and none of the user's: a session of
            // its own, without a controlling terminal (`/dev/tty` cannot
            // reach the user's).
            keyward_sys::new_session_on_spawn(&mut cmd);
        }
        Ok(terminal)
    });
    let terminal = match terminal {
        Ok(terminal) => terminal,
        Err(e) => {
            unregister(&client, &created.run_id).await;
            remove_private_tmp(private_tmp.as_deref());
            return Err(e);
        }
    };
    if let Some(fd) = broker {
        // The program's end becomes its fd 3; this process keeps no copy
        // (dropped with `cmd` after the spawn), so the broker sees EOF
        // once the program and its descendants have all closed it.
        keyward_sys::pass_fd_on_spawn(&mut cmd, fd, BROKER_FD);
    }
    // Caught from before the program starts: a signal that arrived while
    // it was being registered would otherwise kill this process (default
    // action) and leave the program running without its wrapper.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Ctrl-\\ (or a terminal whose quit character the program changed)
    // must not kill this wrapper and leave the program's processes outside
    // their run: it is forwarded like the others.
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigwinch = match &terminal {
        Some(_) => Some(signal(SignalKind::window_change())?),
        None => None,
    };
    let spawned = tokio::process::Command::from(cmd).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            unregister(&client, &created.run_id).await;
            remove_private_tmp(private_tmp.as_deref());
            return Err(ProgramNotStarted {
                program: std::path::Path::new(&args.command[0]).display().to_string(),
                source,
            }
            .into());
        }
    };
    let pid = child
        .id()
        .context("the program exited before it could be tracked")?;
    let relay = match terminal.map(crate::run_pty::PrivateTerminal::start) {
        Some(Ok(relay)) => Some(relay),
        Some(Err(e)) => {
            let _ = keyward_sys::send_signal(pid, Signal::Kill);
            let _ = child.wait().await;
            unregister(&client, &created.run_id).await;
            remove_private_tmp(private_tmp.as_deref());
            return Err(e);
        }
        None => None,
    };
    // The program's namespace handed its listeners over before exec: from
    // now on they are served here, in the host's namespace.
    if let Some((listeners, proxy_port)) = listeners {
        let bridged = listeners
            .receive()
            .and_then(|listeners| keyward_runs::net_bridge::spawn_bridge(listeners, proxy_port));
        if let Err(e) = bridged {
            let _ = keyward_sys::send_signal(pid, Signal::Kill);
            let _ = child.wait().await;
            unregister(&client, &created.run_id).await;
            remove_private_tmp(private_tmp.as_deref());
            bail!("cannot bridge the proxy into the run's network namespace: {e}");
        }
    }

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for the program")?,
            _ = sigint.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Int); }
            _ = sigterm.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Term); }
            _ = sighup.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Hup); }
            _ = sigquit.recv() => { let _ = keyward_sys::send_signal(pid, Signal::Quit); }
            Some(()) = async { match &mut sigwinch { Some(s) => s.recv().await, None => None } } => {
                if let Some(relay) = &relay { relay.resize(); }
            }
            // Orphans that exit are reaped here; the program's own status
            // is left for `wait`.
            _ = sigchld.recv() => { keyward_sys::reap_exited_children(Some(pid)); }
        }
    };
    // Nothing the program started outlives the run: what it left behind
    // is ended before the run (and its confinement) goes. A leftover can
    // make that impossible from here (say, by setting this process's
    // open-file limit to 0, so /proc cannot be read): a signal then ends
    // this wrapper at once, and the daemon, which watches it, ends the run
    // and everything in its cgroup.
    let exit_now = |code: i32| -> ! {
        if let Some(relay) = &relay {
            relay.restore();
        }
        std::process::exit(code)
    };
    let ended = tokio::select! {
        ended = end_leftovers(daemon_pid) => ended,
        _ = sigint.recv() => exit_now(128 + 2),
        _ = sigterm.recv() => exit_now(128 + 15),
        _ = sighup.recv() => exit_now(128 + 1),
    };
    // The program and what it left are gone: the rest of their output is
    // shown and the user's terminal is as it was.
    if let Some(relay) = relay {
        tokio::task::spawn_blocking(move || relay.finish()).await?;
    }
    if ended > 0 {
        eprintln!("keyward run: ended {ended} process(es) the program left running");
    }
    // Removed while the run still stands: once it is unregistered, the
    // daemon ends what is left in the run's cgroup, which would include
    // the `rm` this starts.
    remove_private_tmp(private_tmp.as_deref());
    drop(_stop_follower);
    if let Some(info) = unregister(&client, &created.run_id).await
        && !args.quiet
    {
        report_problems(&info.problems);
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        (None, None) => ExitCode::FAILURE,
    })
}

/// The program could not be started: not found (exit 127, as a shell
/// says), or found but not executable (126).
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {source}")]
pub struct ProgramNotStarted {
    program: String,
    source: std::io::Error,
}

impl ProgramNotStarted {
    /// The exit status a shell gives the same failure.
    pub fn status(&self) -> u8 {
        if self.source.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        }
    }
}

/// How the program will be confined.
struct Confinement {
    sandbox: keyward_sys::PreparedSandbox,
    /// One line: what Landlock enforces, for the run record.
    summary: String,
    /// Removed when the run ends.
    private_tmp: Option<PathBuf>,
    /// The program's `TMPDIR`, when not inherited.
    tmpdir: Option<PathBuf>,
    /// Where the private network namespace's listeners arrive, and the
    /// proxy's port they bridge to.
    listeners: Option<(keyward_sys::NamespaceListeners, u16)>,
}

impl Confinement {
    fn cleanup(&self) {
        remove_private_tmp(self.private_tmp.as_deref());
    }
}

/// Every run's processes are kept from signalling anything outside their
/// run where Landlock can (ABI 6+): they cannot kill this wrapper or the
/// daemon. `--sandbox` adds files and TCP.
async fn plan_confinement(
    ctx: &Context,
    args: &RunArgs,
    client: &keyward_api::Client,
) -> Result<Confinement> {
    let Some(mode) = args.sandbox else {
        // Every run's processes are kept out of the cgroup file systems:
        // writing a `cgroup.procs` would let one leave its run's cgroup, or
        // put another process in it for the daemon to end with the run.
        // And a small syscall filter: no `clone3` (a process born into
        // another cgroup), no changing other processes' limits (a CPU limit
        // of 0 kills `keyward run` or the daemon).
        let sandbox = keyward_sys::prepare_sandbox(&keyward_sys::SandboxRules {
            no_write: keyward_sys::cgroup_mounts(),
            run_filter: true,
            ..Default::default()
        })?;
        let summary = describe(&sandbox);
        return Ok(Confinement {
            sandbox,
            summary,
            private_tmp: None,
            tmpdir: None,
            listeners: None,
        });
    };
    let home = ctx.home()?;
    let config = ctx.load_config()?;
    let proxy_port = client
        .health()
        .await?
        .proxy_port
        .context("the daemon reports no proxy port")?;
    let mut missing = Vec::new();
    // The mount view: the home, other users' runtime files and other
    // programs' sockets absent, /tmp and /dev/shm the run's own.
    let mount_view = match keyward_sys::probe_mount_view() {
        Ok(()) => true,
        Err(e) => {
            missing.push(format!("no private mount view: {e}"));
            false
        }
    };
    let request = SandboxRequest {
        profile: args.sandbox_profile.clone(),
        read: args.sandbox_allow_read.clone(),
        write: args.sandbox_allow_write.clone(),
        connect_ports: args.allow_port.clone(),
        bind_ports: args.allow_bind.clone(),
        mount_view,
    };
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let plan = keyward_runs::sandbox::plan(home, &config, &request, &cwd, proxy_port)?;
    let prepared = keyward_sys::prepare_sandbox(&plan.rules)
        .map_err(anyhow::Error::from)
        .and_then(|mut sandbox| {
            if let Some(spec) = &plan.mount_view {
                sandbox.set_mount_view(keyward_sys::MountView::new(spec)?);
            }
            Ok(sandbox)
        });
    let mut sandbox = match prepared {
        Ok(sandbox) => sandbox,
        Err(e) => {
            remove_private_tmp(plan.private_tmp.as_deref());
            return Err(e);
        }
    };
    // The private network namespace: the proxy's port and each
    // --allow-port, bridged in from the host's loopback; nothing else.
    let mut listeners = None;
    let mut netns_summary = None;
    let mut netns_missing = false;
    if mode != SandboxArg::NoNetns {
        let kind = keyward_sys::namespace_kind();
        let forwarded: Vec<u16> = std::iter::once(proxy_port)
            .chain(args.allow_port.iter().copied())
            .collect();
        let made = keyward_sys::probe_private_network(kind)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                keyward_sys::private_network(kind, &forwarded).map_err(|e| e.to_string())
            });
        match made {
            Ok((network, receiver)) => {
                sandbox.set_private_network(network);
                listeners = Some((receiver, proxy_port));
                netns_summary = Some(describe_netns(kind, proxy_port, &args.allow_port));
            }
            Err(why) => {
                netns_missing = true;
                missing.push(format!("no private network namespace: {why}"));
            }
        }
    }
    let mut summary = describe(&sandbox);
    if let Some(netns) = &netns_summary {
        summary.push_str("; ");
        summary.push_str(netns);
    }
    if let Some(spec) = &plan.mount_view {
        summary.push_str("; ");
        summary.push_str(&describe_mount_view(spec));
    }
    if !sandbox.missing.is_empty() {
        let kernel = if sandbox.abi == 0 {
            "this kernel has no Landlock (not built in, or not in the `lsm=` boot list)".to_owned()
        } else {
            format!("this kernel offers Landlock ABI {}", sandbox.abi)
        };
        missing.push(format!(
            "{kernel}, which cannot confine {} (ABI 6 or later confines files, TCP and signals)",
            sandbox.missing.join(", ")
        ));
    }
    if let Some(why) = &sandbox.filter_unavailable {
        missing.push(format!("the syscall filter cannot be installed: {why}"));
    }
    if !missing.is_empty() && mode != SandboxArg::BestEffort {
        remove_private_tmp(plan.private_tmp.as_deref());
        bail!(
            "--sandbox cannot be enforced: {}; use --sandbox=best-effort to run with what \
             can be enforced{}",
            missing.join("; "),
            if netns_missing {
                ", or --sandbox=no-netns to run without the private network namespace"
            } else {
                ""
            }
        );
    }
    for note in &plan.notes {
        eprintln!("sandbox: {note}");
    }
    if missing.is_empty() {
        eprintln!("sandbox: {summary}");
    } else {
        eprintln!("sandbox: {summary}; NOT enforced: {}", missing.join("; "));
    }
    Ok(Confinement {
        sandbox,
        summary,
        private_tmp: plan.private_tmp,
        tmpdir: plan.tmpdir,
        listeners,
    })
}

/// `private network namespace (user+net): loopback only; 127.0.0.1:PORT
/// bridged to the proxy; host port P forwarded`, for the run record.
fn describe_netns(kind: keyward_sys::NamespaceKind, proxy_port: u16, allowed: &[u16]) -> String {
    let mut text = format!(
        "private network namespace ({}): loopback only; 127.0.0.1:{proxy_port} bridged to the proxy \
         (and [::1]:{proxy_port} where the namespace has IPv6)",
        kind.describe()
    );
    let mut forwarded: Vec<u16> = allowed
        .iter()
        .copied()
        .filter(|p| *p != proxy_port)
        .collect();
    forwarded.sort_unstable();
    forwarded.dedup();
    if !forwarded.is_empty() {
        let ports: Vec<String> = forwarded.iter().map(u16::to_string).collect();
        text.push_str(&format!(
            "; host loopback port{} {} forwarded",
            if ports.len() == 1 { "" } else { "s" },
            ports.join(", ")
        ));
    }
    text
}

/// `private mount view: /tmp, /dev/shm private; hidden: HOME, /run/user;
/// N sockets covered`, for the run record.
fn describe_mount_view(spec: &keyward_sys::MountViewSpec) -> String {
    let private: Vec<String> = spec
        .replace
        .iter()
        .map(|(_, target)| target.display().to_string())
        .collect();
    let hidden: Vec<String> = spec.hide.iter().map(|h| h.display().to_string()).collect();
    format!(
        "private mount view: {} private; hidden: {}; {} socket(s) and file(s) covered",
        private.join(", "),
        hidden.join(", "),
        spec.cover.len()
    )
}

/// `landlock ABI 7: fs, tcp, signals; seccomp syscall filter`, or what
/// confines without Landlock.
fn describe(sandbox: &keyward_sys::PreparedSandbox) -> String {
    let landlock = if sandbox.enforced.is_empty() {
        "process ancestry only (no Landlock scoping on this kernel)".to_owned()
    } else {
        format!(
            "landlock ABI {}: {}",
            sandbox.abi,
            sandbox.enforced.join(", ")
        )
    };
    if sandbox.filters_syscalls() {
        format!("{landlock}; seccomp syscall filter")
    } else {
        landlock
    }
}

fn remove_private_tmp(dir: Option<&std::path::Path>) {
    if let Some(dir) = dir {
        keyward_runs::sandbox::remove_private_tmp(dir);
    }
}

/// Ends every process left among this wrapper's children (orphans of the
/// program reparented to it), except `spare` (a daemon this wrapper
/// started): SIGTERM, then after a grace period SIGSTOP and SIGKILL (a
/// stopped process cannot fork, so a process that keeps forking is caught),
/// until the kernel reports no child left. It never gives up: while it
/// cannot tell (e.g. `/proc` unreadable), the run stays registered and its
/// processes stay inside it. Returns how many processes it signalled.
async fn end_leftovers(spare: Option<u32>) -> usize {
    const GRACE: Duration = Duration::from_secs(2);
    const WARN_AFTER: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let mut signalled = std::collections::HashSet::new();
    let mut warned = false;
    loop {
        keyward_sys::reap_any_exited();
        // `unknown`: children exist but cannot be named; the run stays open.
        let (left, unknown): (Vec<u32>, bool) = match keyward_sys::own_children() {
            Ok(children) => (
                children.into_iter().filter(|p| Some(*p) != spare).collect(),
                false,
            ),
            Err(_) => (Vec::new(), keyward_sys::has_children()),
        };
        if left.is_empty() && !unknown {
            return signalled.len();
        }
        if started.elapsed() > WARN_AFTER && !warned {
            warned = true;
            eprintln!(
                "keyward run: processes the program left are still being ended; \
                 the run stays open until they are gone"
            );
        }
        if started.elapsed() < GRACE {
            for pid in left {
                if signalled.insert(pid) {
                    let _ = keyward_sys::send_signal(pid, Signal::Term);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        for pid in &left {
            let _ = keyward_sys::send_signal(*pid, Signal::Stop);
            signalled.insert(*pid);
        }
        for pid in &left {
            let _ = keyward_sys::send_signal(*pid, Signal::Kill);
        }
        if unknown {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// `keyward ca path` / `keyward ca export`.
pub async fn ca(ctx: &Context, cmd: &CaCommand) -> Result<ExitCode> {
    let home = ctx.home()?;
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
            let v: serde_json::Value = ctx
                .ensure_daemon()
                .await?
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
            // The daemon makes the CA when it first starts.
            if !cert.exists() {
                ctx.ensure_daemon().await?;
            }
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

/// Ends the run; its record, with what did not go as the program asked.
async fn unregister(client: &keyward_api::Client, run_id: &str) -> Option<RunInfo> {
    client
        .call(Method::DELETE, &format!("/v1/runs/{run_id}"), None::<&()>)
        .await
        .ok()
}

/// Ends a task when dropped (on every way out of `run`).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// `--verbose`: says each problem of the run as the daemon notes it (a
/// new one, or one more of a kind already said), until aborted. Stops
/// quietly if the daemon cannot be asked: the report at the end still
/// comes.
async fn follow_problems(client: keyward_api::Client, run_id: String) {
    let mut seen = 0u64;
    let mut said: BTreeMap<(String, String, Option<String>), u32> = BTreeMap::new();
    loop {
        let Ok(answer) = client
            .call::<(), keyward_api::RunProblems>(
                Method::GET,
                &format!("/v1/runs/{run_id}/problems?seen={seen}"),
                None,
            )
            .await
        else {
            return;
        };
        seen = answer.noted;
        for p in &answer.problems {
            let key = (p.kind.clone(), p.target.clone(), p.rule.clone());
            let before = said.insert(key, p.count).unwrap_or(0);
            if p.count > before {
                eprintln!("keyward run: {}", describe_problem(p));
                if before == 0
                    && let Some(fix) = &p.fix
                {
                    eprintln!("keyward run:   fix: {}", keyward_api::printable(fix));
                }
            }
        }
    }
}

/// One problem in a line: kind, target, rule, count, what happened.
fn describe_problem(p: &keyward_api::RunProblem) -> String {
    let kind = match p.kind.as_str() {
        "not_injected" => "sent without its secret",
        other => other,
    };
    let rule = p
        .rule
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let times = if p.count == 1 {
        String::new()
    } else {
        format!(", {} times", p.count)
    };
    keyward_api::printable(&format!("{kind}: {}{rule}{times}: {}", p.target, p.detail))
}

/// Says on stderr, once the program is done, which of its requests were
/// refused, failed upstream or went out without their secret, and what
/// would change that.
fn report_problems(problems: &[keyward_api::RunProblem]) {
    if problems.is_empty() {
        return;
    }
    let total: u32 = problems.iter().map(|p| p.count).sum();
    eprintln!(
        "keyward run: {total} request{} did not go as asked (--quiet hides this):",
        if total == 1 { "" } else { "s" }
    );
    for p in problems {
        eprintln!("  {}", describe_problem(p));
        if let Some(fix) = &p.fix {
            eprintln!("    fix: {}", keyward_api::printable(fix));
        }
    }
}
