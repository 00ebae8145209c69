//! Driving a daemon from the outside: detached start, stop and status, with
//! the lifecycle rules they follow (the PID file's lock, readiness through
//! a notify socket, a log tail when a start fails).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyward_api::{Client, ClientError, Health, KeyMode, VaultStatus};
use keyward_sys::{Signal, process_exists, send_signal};
use serde::Serialize;

use keyward_config::home::{Home, HomeError};
use keyward_daemon::pidfile::{PidFileState, inspect};

/// How much of `daemon.log` a failed start shows.
const LOG_TAIL_LINES: usize = 20;

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon runs for this home; `detail` says what was found.
    #[error("the daemon is not running (home {}); {detail}", home.display())]
    NotRunning {
        /// The home.
        home: PathBuf,
        /// What the PID file and socket showed.
        detail: String,
    },
    /// A live daemon already holds the home.
    #[error("a keyward daemon already runs for this home (pid {}, socket {})",
        pid.map_or("unknown".to_owned(), |p| p.to_string()), socket.display())]
    AlreadyRunning {
        /// Its pid.
        pid: Option<u32>,
        /// Its socket.
        socket: PathBuf,
    },
    /// The detached daemon exited before it was ready.
    #[error("the keyward daemon exited during start-up ({status}); {} says:\n{log_tail}", log.display())]
    StartExited {
        /// Its exit code, when it exited normally.
        code: Option<i32>,
        /// How it ended, for people.
        status: String,
        /// The log file.
        log: PathBuf,
        /// The last lines it wrote there.
        log_tail: String,
    },
    /// The detached daemon did not become ready in time and was killed.
    #[error("the keyward daemon was not ready within {}s and was killed; {} says:\n{log_tail}",
        timeout.as_secs(), log.display())]
    StartTimeout {
        /// The limit.
        timeout: Duration,
        /// The log file.
        log: PathBuf,
        /// The last lines it wrote there.
        log_tail: String,
    },
    /// The daemon did not exit in time after SIGTERM.
    #[error("keyward daemon (pid {pid}) did not exit within {}s of SIGTERM; \
             run `keyward daemon stop --force` to kill it", timeout.as_secs_f32())]
    StopTimeout {
        /// Its pid.
        pid: u32,
        /// The limit.
        timeout: Duration,
    },
    /// The home cannot be used.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Talking to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An I/O step failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

/// Starts the daemon in the background: `exe args` must run it in the
/// foreground (`keyward … daemon start`). The child gets a new session,
/// stdin from /dev/null and its output appended to `daemon.log`; this waits
/// for its readiness notification and a `/v1/health` answer, and returns its
/// pid. A child not ready within `timeout` is killed.
pub async fn start_detached(
    home: &Home,
    exe: &Path,
    args: Vec<OsString>,
    timeout: Duration,
) -> Result<u32, ControlError> {
    home.check_socket_path()?;
    home.ensure_private()?;
    if let PidFileState::Held { pid } = inspect(&home.pid_path()).map_err(io_err(format!(
        "cannot read the PID file {}",
        home.pid_path().display()
    )))? {
        return Err(ControlError::AlreadyRunning {
            pid,
            socket: home.socket_path(),
        });
    }

    let log_path = home.log_path();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io_err(format!("cannot open {}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

    // The child tells us it is ready through a private notify socket, the
    // same protocol systemd uses, so we wait on an event instead of polling.
    // An abstract name needs no file and fits any home.
    let notify_name = format!("keyward-ready-{}-{}", std::process::id(), nanos_now());
    let notify = bind_abstract_datagram(&notify_name)
        .map_err(io_err("cannot create the readiness socket"))?;

    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("NOTIFY_SOCKET", format!("@{notify_name}"))
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(io_err("cannot duplicate the log handle"))?,
        )
        .stderr(log);
    keyward_sys::new_session_on_spawn(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(io_err(format!("cannot start {}", exe.display())))?;
    let pid = child.id().unwrap_or_default();

    let client = Client::new(home.socket_path());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(io_err("cannot wait for the daemon"))?;
                // Another `daemon start` won a race for the home: ours
                // found it held and left. That is "already running", not a
                // failed start (whose log tail would be the winner's).
                // Ours has exited, so whoever holds the PID file is the
                // other (its pid may not be written yet).
                if let Ok(PidFileState::Held { pid: winner }) = inspect(&home.pid_path()) {
                    return Err(ControlError::AlreadyRunning {
                        pid: winner,
                        socket: home.socket_path(),
                    });
                }
                return Err(ControlError::StartExited {
                    code: status.code(),
                    status: status.to_string(),
                    log: log_path.clone(),
                    log_tail: log_tail(&log_path, log_start),
                });
            }
            received = notify.recv(&mut buf) => {
                let n = received.map_err(io_err("cannot read the readiness socket"))?;
                let ready = String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1");
                if ready && client.health().await.is_ok_and(|h| h.pid == pid) {
                    return Ok(pid);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(ControlError::StartTimeout {
                    timeout,
                    log: log_path.clone(),
                    log_tail: log_tail(&log_path, log_start),
                });
            }
        }
    }
}

/// Makes sure a daemon runs for `home`, starting one detached (as
/// [`start_detached`]) if none answers. Concurrent callers serialize on
/// `<home>/spawn.lock`, so exactly one daemon is started. Returns the pid
/// when this call started it.
pub async fn ensure_running(
    home: &Home,
    exe: &Path,
    args: Vec<OsString>,
    timeout: Duration,
) -> Result<Option<u32>, ControlError> {
    let client = Client::new(home.socket_path());
    if client.health().await.is_ok() {
        return Ok(None);
    }
    home.check_socket_path()?;
    home.ensure_private()?;
    let lock_path = home.spawn_lock_path();
    let what = format!("cannot lock {}", lock_path.display());
    let lock = tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)?;
        file.lock()?;
        Ok::<_, io::Error>(file)
    })
    .await
    .map_err(|e| ControlError::Io {
        what: what.clone(),
        source: io::Error::other(e.to_string()),
    })?
    .map_err(io_err(what))?;
    // A concurrent caller may have started it while we waited.
    if client.health().await.is_ok() {
        return Ok(None);
    }
    let pid = start_detached(home, exe, args, timeout).await?;
    drop(lock);
    Ok(Some(pid))
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn bind_abstract_datagram(name: &str) -> io::Result<tokio::net::UnixDatagram> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
    sock.set_nonblocking(true)?;
    tokio::net::UnixDatagram::from_std(sock)
}

/// The last lines written to the log since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        "(nothing)".to_owned()
    } else {
        tail
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Exited after SIGTERM.
    Gracefully {
        /// Its pid.
        pid: u32,
    },
    /// Did not exit in time and was killed (`--force`).
    Killed {
        /// Its pid.
        pid: u32,
    },
}

/// Sends SIGTERM to the daemon named by the PID file and waits up to
/// `timeout` for it to exit; with `force`, SIGKILLs it after that and
/// cleans up what it left. Only a PID file whose lock is held is trusted,
/// so a stale file never makes us signal an unrelated process.
pub async fn stop(home: &Home, timeout: Duration, force: bool) -> Result<Stopped, ControlError> {
    let pid = match inspect(&home.pid_path()).map_err(io_err(format!(
        "cannot read the PID file {}",
        home.pid_path().display()
    )))? {
        PidFileState::Held { pid: Some(pid) } => pid,
        PidFileState::Held { pid: None } => {
            return Err(ControlError::Io {
                what: format!(
                    "the PID file {} is locked but names no pid yet (a daemon is starting)",
                    home.pid_path().display()
                ),
                source: io::Error::from(io::ErrorKind::WouldBlock),
            });
        }
        state => {
            return Err(ControlError::NotRunning {
                home: home.root().to_owned(),
                detail: describe_leftovers(home, state),
            });
        }
    };
    send_signal(pid, Signal::Term).map_err(io_err(format!("cannot send SIGTERM to pid {pid}")))?;
    if wait_gone(pid, timeout).await {
        return Ok(Stopped::Gracefully { pid });
    }
    if !force {
        return Err(ControlError::StopTimeout { pid, timeout });
    }
    tracing::warn!("pid {pid} did not exit within {timeout:?} of SIGTERM; sending SIGKILL");
    send_signal(pid, Signal::Kill).map_err(io_err(format!("cannot send SIGKILL to pid {pid}")))?;
    if !wait_gone(pid, Duration::from_secs(5)).await {
        return Err(ControlError::StopTimeout { pid, timeout });
    }
    // A killed daemon could not clean up; its lock died with it, so these
    // files are now stale and safe to remove.
    let _ = fs::remove_file(home.socket_path());
    let _ = fs::remove_file(home.pid_path());
    Ok(Stopped::Killed { pid })
}

async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_exists(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What `keyward status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Whether the daemon answered.
    pub running: bool,
    /// Its pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Seconds since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// What it can do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// The admin socket.
    pub socket: PathBuf,
    /// The home.
    pub home: PathBuf,
    /// When not running: a PID file left by a daemon that is gone.
    pub stale_pid_file: bool,
    /// The pid the stale PID file names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_pid: Option<u32>,
    /// When not running: a socket file nobody listens on.
    pub stale_socket: bool,
    /// When not running: what was found, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The egress proxy's port on 127.0.0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<u16>,
    /// Why the evidence log cannot write, while it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_error: Option<String>,
    /// What was wrong with the evidence log's tail at the daemon's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_warning: Option<String>,
    /// The last config reload failed (the previous config stays in
    /// effect): when and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_failed: Option<keyward_api::ReloadFailure>,
    /// The gRPC listener for remote callers, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<keyward_api::GrpcListening>,
    /// The vault's state (`uninitialized`, `sealed`, `unsealed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_state: Option<String>,
    /// The vault's key mode (`key_file`, `passphrase`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_mode: Option<String>,
    /// The protection level this setup gives, stated honestly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<String>,
}

/// What this setup protects against (README "Protection levels").
fn protection(mode: Option<KeyMode>, daemon_uid: Option<u32>) -> String {
    let own_user = daemon_uid.is_some_and(|uid| uid != keyward_sys::effective_uid());
    let vault = match mode {
        None => "no vault yet".to_owned(),
        Some(KeyMode::KeyFile) if own_user => {
            "key-file vault, readable only by the daemon's user".to_owned()
        }
        Some(KeyMode::KeyFile) => {
            "key-file vault: secrets stay out of children's env, argv and logs, \
             but a process running as this user can read vault/identity.txt; use \
             `vault init --passphrase` or run the daemon as its own user for more"
                .to_owned()
        }
        Some(KeyMode::Passphrase) => {
            "passphrase vault: the key lives only in the daemon's (non-dumpable) memory".to_owned()
        }
    };
    let vault = if own_user {
        format!(
            "{vault}; the daemon runs as its own user (uid {}), so this user cannot read its files",
            daemon_uid.unwrap_or_default()
        )
    } else {
        vault
    };
    format!("{vault}; {}", run_confinement(keyward_sys::landlock_abi()))
}

/// What confines a run's processes on this kernel.
fn run_confinement(abi: i32) -> String {
    match abi {
        6.. => format!(
            "sandboxed runs available (`keyward run --sandbox`, Landlock ABI {abi}: files, \
             TCP, signals; a seccomp filter; a private network namespace where the proxy \
             is the only way out, where user namespaces are allowed), the level to use for \
             untrusted agents; every run's processes are kept from signalling outside \
             their run"
        ),
        4 | 5 => format!(
            "`keyward run --sandbox` confines files and TCP (Landlock ABI {abi}) but not \
             signals: a child can kill its `keyward run` and leave its run"
        ),
        1..=3 => format!(
            "`keyward run --sandbox` confines files only (Landlock ABI {abi}): a child can \
             bypass the proxy with raw sockets and kill its `keyward run`"
        ),
        _ => "no Landlock on this kernel: runs are confined by process ancestry only \
              (a child can kill its `keyward run` and leave its run); use a container or \
              run the daemon as its own user"
            .to_owned(),
    }
}

/// Asks the daemon for its health; when it does not answer, inspects the
/// PID file and socket and says what was left behind.
pub async fn status(home: &Home) -> Result<StatusReport, ControlError> {
    home.check_socket_path()?;
    let client = Client::new(home.socket_path());
    let mut report = StatusReport {
        running: false,
        pid: None,
        version: None,
        commit: None,
        started_at: None,
        uptime_s: None,
        capabilities: None,
        socket: home.socket_path(),
        home: home.root().to_owned(),
        stale_pid_file: false,
        stale_pid: None,
        stale_socket: false,
        detail: None,
        proxy_port: None,
        evidence_error: None,
        evidence_warning: None,
        reload_failed: None,
        grpc: None,
        vault_state: None,
        vault_mode: None,
        protection: None,
    };
    match client.health().await {
        Ok(Health {
            pid,
            version,
            commit,
            started_at,
            uptime_s,
            capabilities,
            proxy_port,
            evidence_error,
            evidence_warning,
            reload_failed,
            grpc,
            ..
        }) => {
            report.reload_failed = reload_failed;
            report.grpc = grpc;
            report.proxy_port = proxy_port;
            report.evidence_error = evidence_error;
            report.evidence_warning = evidence_warning;
            report.running = true;
            report.pid = Some(pid);
            report.version = Some(version);
            report.commit = Some(commit);
            report.started_at = Some(started_at);
            report.uptime_s = Some(uptime_s);
            report.capabilities = Some(capabilities);
            // An older daemon without a vault answers 404: leave these out.
            if let Ok(vault) = client
                .call::<(), VaultStatus>(hyper::Method::GET, "/v1/vault", None)
                .await
            {
                let socket_uid = fs::metadata(home.socket_path()).ok().map(|m| m.uid());
                report.vault_state = Some(vault.state.as_str().to_owned());
                report.vault_mode = vault.mode.map(|m| m.as_str().to_owned());
                report.protection = Some(protection(vault.mode, socket_uid));
            }
            Ok(report)
        }
        Err(ClientError::NotRunning { .. }) => {
            let state = inspect(&home.pid_path()).map_err(io_err(format!(
                "cannot read the PID file {}",
                home.pid_path().display()
            )))?;
            if let PidFileState::Stale { pid } = state {
                report.stale_pid_file = true;
                report.stale_pid = pid;
            }
            report.stale_socket = is_socket(&home.socket_path());
            report.detail = Some(describe_leftovers(home, state));
            Ok(report)
        }
        Err(e) => Err(e.into()),
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn describe_leftovers(home: &Home, state: PidFileState) -> String {
    let socket = home.socket_path();
    let mut found = Vec::new();
    match state {
        PidFileState::Absent => {}
        PidFileState::Stale { pid } => found.push(format!(
            "found a stale PID file {} (pid {}, no longer running)",
            home.pid_path().display(),
            pid.map_or("unreadable".to_owned(), |p| p.to_string())
        )),
        PidFileState::Held { pid } => found.push(format!(
            "pid {} holds the PID file but does not answer on {} (starting, stopping or hung)",
            pid.map_or("unknown".to_owned(), |p| p.to_string()),
            socket.display()
        )),
    }
    if is_socket(&socket) {
        found.push(format!(
            "found a stale socket {} (nobody listening)",
            socket.display()
        ));
    }
    if found.is_empty() {
        "no PID file or socket found; start it with `keyward daemon start --detach`".to_owned()
    } else {
        format!(
            "{}; `keyward daemon start` cleans these up",
            found.join("; ")
        )
    }
}
