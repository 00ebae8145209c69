//! What every command needs from the global options, resolved once per
//! command: the home, the config file, a client for the home's daemon, and
//! starting that daemon when a command needs one.

use std::cell::OnceCell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::control::{self, ControlError};
use anyhow::{Context as _, Result};
use keyward_config::home::Home;
use keyward_config::{self as config, ConfigSource, LoadedConfig};

use crate::cli::{Cli, LogFormat};

/// How long a detached daemon may take to become ready.
pub const DETACH_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The global options of one command line, and what they resolve to.
pub struct Context {
    home_flag: Option<PathBuf>,
    config_flag: Option<PathBuf>,
    log_format: LogFormat,
    remote: Option<Remote>,
    /// Resolved on first use: `version` and `policy` need no home, and a
    /// machine without one must still run them.
    home: OnceCell<Home>,
}

impl Context {
    pub fn new(cli: &Cli) -> Self {
        Self {
            home_flag: cli.home.clone(),
            config_flag: cli.config.clone(),
            log_format: cli.log_format,
            remote: cli.remote.clone().map(|url| Remote {
                url,
                token_file: cli.token_file.clone(),
                ca_file: cli.remote_ca.clone(),
                identity: cli.remote_identity.clone(),
            }),
            home: OnceCell::new(),
        }
    }

    /// The keyward server `--remote` names, if any.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// A context for the home at `home`, with the default config file in
    /// it (`keyward demo`'s temporary home).
    pub fn for_home(home: PathBuf, log_format: LogFormat) -> Self {
        Self {
            home_flag: Some(home),
            config_flag: None,
            log_format,
            remote: None,
            home: OnceCell::new(),
        }
    }

    /// The home: `--home`, `KEYWARD_HOME`, else the XDG default.
    pub fn home(&self) -> Result<&Home> {
        if let Some(home) = self.home.get() {
            return Ok(home);
        }
        let home = Home::resolve(self.home_flag.as_deref())?;
        Ok(self.home.get_or_init(|| home))
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The config source: `--config`/`KEYWARD_CONFIG` must exist; the
    /// default `<home>/keyward.toml` may be absent.
    pub fn config_source(&self) -> Result<ConfigSource> {
        Ok(match &self.config_flag {
            Some(path) if !path.as_os_str().is_empty() => ConfigSource {
                path: std::path::absolute(path)
                    .with_context(|| format!("cannot resolve {}", path.display()))?,
                explicit: true,
            },
            _ => ConfigSource {
                path: self.home()?.default_config_path(),
                explicit: false,
            },
        })
    }

    /// The config as the daemon would read it (a broken file is an error
    /// naming file, key and expectation: exit 64).
    pub fn load_config(&self) -> Result<LoadedConfig> {
        Ok(config::load(&self.config_source()?)?)
    }

    /// A client for this home's daemon (which may not run).
    pub fn client(&self) -> Result<keyward_api::Client> {
        Ok(keyward_api::Client::new(self.home()?.socket_path()))
    }

    /// A client for a daemon that runs: starts one (detached) if none does.
    pub async fn ensure_daemon(&self) -> Result<keyward_api::Client> {
        let home = self.home()?;
        // A running daemon is used as it is: its config is its own business
        // (a broken file on disk must not stop clients of a working daemon).
        let running = self.client()?;
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
        let (exe, args) = self.daemon_command(None, false)?;
        if let Some(pid) = control::ensure_running(home, &exe, args, DETACH_READY_TIMEOUT).await? {
            eprintln!("keyward: started the daemon (pid {pid})");
        }
        self.client()
    }

    /// The executable and arguments that run this context's daemon in the
    /// foreground: same home, config and log format. The config is checked
    /// here too, so a bad one fails fast (exit 64) and nothing is spawned.
    pub fn daemon_command(
        &self,
        idle_exit: Option<Option<Duration>>,
        require_runner_auth: bool,
    ) -> Result<(PathBuf, Vec<OsString>)> {
        let home = self.home()?;
        let source = self.config_source()?;
        let loaded = config::load(&source)?;
        if require_runner_auth {
            runner_auth_verifiable(&loaded)?;
        }

        let mut args: Vec<OsString> = vec!["--home".into(), home.root().into()];
        if source.explicit {
            args.extend(["--config".into(), source.path.clone().into()]);
        }
        args.extend(["--log-format".into(), self.log_format.as_arg().into()]);
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
}

/// A keyward server reached over its gRPC API (team mode).
pub struct Remote {
    url: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
}

impl Remote {
    /// Connects with the token from `--token-file`.
    pub async fn connect(&self) -> Result<keyward_grpc::RemoteClient> {
        let file = self.token_file.as_ref().context(
            "--remote needs an API token: --token-file FILE (or KEYWARD_TOKEN_FILE) holding the \
             kwt_... value `keyward token issue` printed",
        )?;
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?;
        let token = token.trim();
        if !token.starts_with(keyward_auth::TOKEN_PREFIX) {
            anyhow::bail!(
                "{} does not hold a keyward API token (kwt_ and 32 hex digits)",
                file.display()
            );
        }
        let options = keyward_grpc::RemoteOptions {
            url: &self.url,
            ca_file: self.ca_file.as_deref(),
            client_identity: self
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            token,
        };
        Ok(keyward_grpc::RemoteClient::connect(&options).await?)
    }
}

/// For `--require-runner-auth`: the config must say how to verify runner
/// auth, else every evaluation would be blocked.
pub fn runner_auth_verifiable(loaded: &LoadedConfig) -> Result<(), config::ConfigError> {
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
