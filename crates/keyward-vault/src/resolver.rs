//! Resolving references to values, with a TTL cache held only in memory
//! (values zeroized on drop, never written anywhere).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::SecretString;

use crate::error::VaultError;
use crate::openbao::OpenBao;
use crate::reference::SecretRef;
use crate::vault::Vault;

/// Why a reference did not resolve. Messages never contain a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The secret does not exist where the reference points.
    #[error("{0}")]
    Missing(String),
    /// The local vault is sealed.
    #[error("the vault is sealed; unseal it with `keyward vault unseal`")]
    Sealed,
    /// The backend failed (unreachable, denied, malformed, timed out).
    #[error("{0}")]
    Backend(String),
}

/// ok | missing | sealed | error, for `keyward grant list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveStatus {
    /// Resolves now.
    Ok,
    /// Does not exist.
    Missing,
    /// The vault is sealed.
    Sealed,
    /// The backend failed.
    Error,
}

impl ResolveStatus {
    /// `ok`, `missing`, `sealed` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveStatus::Ok => "ok",
            ResolveStatus::Missing => "missing",
            ResolveStatus::Sealed => "sealed",
            ResolveStatus::Error => "error",
        }
    }
}

impl ResolveError {
    /// The status class.
    pub fn status(&self) -> ResolveStatus {
        match self {
            ResolveError::Missing(_) => ResolveStatus::Missing,
            ResolveError::Sealed => ResolveStatus::Sealed,
            ResolveError::Backend(_) => ResolveStatus::Error,
        }
    }
}

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// How long `file:`, `cmd:` and `openbao:` values are cached.
    pub cache_ttl: Duration,
    /// How long a `cmd:` program may run.
    pub cmd_timeout: Duration,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(300),
            cmd_timeout: Duration::from_secs(10),
        }
    }
}

struct Cached {
    value: SecretString,
    expires: Instant,
}

/// Resolves references for the daemon.
pub struct Resolver {
    vault: Arc<Mutex<Vault>>,
    openbao: Option<Arc<OpenBao>>,
    options: ResolverOptions,
    cache: Mutex<HashMap<SecretRef, Cached>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver over the daemon's vault and, if configured, OpenBao
    /// (whose token, if it was given rather than logged in for, is kept
    /// alive for as long as this resolver lives: see
    /// [`OpenBao::keep_token_alive`]).
    pub fn new(
        vault: Arc<Mutex<Vault>>,
        openbao: Option<OpenBao>,
        options: ResolverOptions,
    ) -> Self {
        let openbao = openbao.map(Arc::new);
        if let Some(bao) = &openbao {
            bao.keep_token_alive();
        }
        Self {
            vault,
            openbao,
            options,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, r: &SecretRef) -> Option<SecretString> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(r)
            .filter(|c| c.expires > Instant::now())
            .map(|c| c.value.clone())
    }

    /// Drops a cached value (an upstream rejected it), so the next
    /// resolution reads it again.
    pub fn forget(&self, r: &SecretRef) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(r);
    }

    fn store(&self, r: &SecretRef, value: &SecretString, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, c| c.expires > Instant::now());
        cache.insert(
            r.clone(),
            Cached {
                value: value.clone(),
                expires: Instant::now() + ttl,
            },
        );
    }

    /// The value `r` points at. Vault and environment values are read
    /// fresh (they are already in memory); the others are cached for the
    /// TTL (for `openbao:`, the lease when the server gives one).
    pub async fn resolve(&self, r: &SecretRef) -> Result<SecretString, ResolveError> {
        match r {
            SecretRef::Vault(name) => {
                // The value is in memory: read it in place when the lock is
                // free; only a writer holding it (fsync) sends us to a
                // blocking thread.
                let fast = self.vault.try_lock().ok().map(|mut v| v.value(name));
                let result = match fast {
                    Some(result) => result,
                    None => {
                        let vault = self.vault.clone();
                        let name = name.clone();
                        tokio::task::spawn_blocking(move || {
                            let mut v = vault.lock().unwrap_or_else(|p| p.into_inner());
                            v.value(&name)
                        })
                        .await
                        .map_err(|e| ResolveError::Backend(format!("vault task failed: {e}")))?
                    }
                };
                result.map_err(|e| match e {
                    VaultError::Sealed | VaultError::PassphraseRequired => ResolveError::Sealed,
                    VaultError::NotFound { .. } | VaultError::Uninitialized => {
                        ResolveError::Missing(e.to_string())
                    }
                    other => ResolveError::Backend(other.to_string()),
                })
            }
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                _ => Err(ResolveError::Missing(format!(
                    "the daemon's environment has no (non-empty) variable {var}"
                ))),
            },
            _ => {
                if let Some(v) = self.cached(r) {
                    return Ok(v);
                }
                let (value, ttl) = self.fetch(r).await?;
                self.store(r, &value, ttl.unwrap_or(self.options.cache_ttl));
                Ok(value)
            }
        }
    }

    async fn fetch(&self, r: &SecretRef) -> Result<(SecretString, Option<Duration>), ResolveError> {
        match r {
            SecretRef::File(path) => {
                let path = path.clone();
                let value = tokio::task::spawn_blocking(move || read_secret_file(&path))
                    .await
                    .map_err(|e| ResolveError::Backend(e.to_string()))??;
                Ok((value, None))
            }
            SecretRef::Cmd { program, args } => Ok((
                run_command(program, args, self.options.cmd_timeout).await?,
                None,
            )),
            SecretRef::OpenBao { mount, path, field } => {
                let bao = self.openbao.as_ref().ok_or_else(|| {
                    ResolveError::Backend(
                        "openbao: references need a [backends.openbao] section with addr and credentials"
                            .to_owned(),
                    )
                })?;
                let (value, lease) = bao.read_kv2(mount, path, field).await?;
                Ok((value, lease))
            }
            SecretRef::Vault(_) | SecretRef::Env(_) => unreachable!("not cached"),
        }
    }
}

/// Reads a secret from a file: contents with trailing newlines trimmed. A
/// file readable by group or others is used with a warning naming it.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ResolveError> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ResolveError::Missing(format!("secret file {} does not exist", path.display()))
        }
        _ => ResolveError::Backend(format!("cannot read secret file {}: {e}", path.display())),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "secret file has mode {mode:o} and is readable beyond its owner; run `chmod 600 {}`",
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        ResolveError::Backend(format!("cannot read secret file {}: {e}", path.display()))
    })?);
    let value = text.trim();
    if value.is_empty() {
        return Err(ResolveError::Missing(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(value.to_owned()))
}

async fn run_command(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<SecretString, ResolveError> {
    let shown = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let child = tokio::process::Command::new(program)
        .args(args)
        // The daemon's own keys stay with the daemon.
        .env_remove("KEYWARD_EVIDENCE_HMAC_KEY")
        .env_remove("KEYWARD_RUNNER_AUTH_HMAC_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ResolveError::Backend(format!("cannot run `{shown}`: {e}")))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            ResolveError::Backend(format!(
                "`{shown}` did not finish within {}s and was killed",
                timeout.as_secs_f32()
            ))
        })?
        .map_err(|e| ResolveError::Backend(format!("`{shown}` failed: {e}")))?;
    let stdout = zeroize::Zeroizing::new(out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(ResolveError::Backend(format!(
            "`{shown}` exited with {}{}",
            out.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        )));
    }
    let text = std::str::from_utf8(&stdout).map_err(|_| {
        ResolveError::Backend(format!("`{shown}` printed something that is not UTF-8"))
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(ResolveError::Missing(format!("`{shown}` printed nothing")));
    }
    Ok(SecretString::from(value.to_owned()))
}
