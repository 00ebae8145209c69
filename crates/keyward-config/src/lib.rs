//! keyward's configuration. `keyward.toml`: loaded, resolved and validated
//! before anything binds; [`edit`] changes it in place, [`grants`] says
//! which secret goes where, [`home`] where keyward keeps its files.
//!
//! Unknown keys are errors naming the key; every error names the file, the
//! key and what was expected, and maps to exit status 64 in the CLI.
#![forbid(unsafe_code)]

pub mod compat;
pub mod edit;
pub mod grants;
pub mod home;
pub mod sandbox;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_vault::{OpenBao, OpenBaoAuth, OpenBaoSettings, read_secret_file};
use secrecy::{ExposeSecret, SecretString};

pub use crate::compat::{CavraCompatConfig, CompatConfig};
use crate::grants::{Grant, GrantConfig, GrantError};
use crate::sandbox::SandboxConfig;
use keyward_policy::Policy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// The whole configuration. Sections are added by later layers; each has
/// working defaults so no file is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[daemon]`
    pub daemon: DaemonConfig,
    /// `[vault]`
    pub vault: VaultConfig,
    /// `[backends]`: where non-vault secret references are resolved.
    pub backends: BackendsConfig,
    /// `[proxy]`: the egress proxy.
    pub proxy: ProxyConfig,
    /// `[policy]`: which policy decides.
    pub policy: PolicyConfig,
    /// `[audit]`: the evidence log.
    pub audit: AuditConfig,
    /// `[grants.NAME]`: grants added to, or overriding, the built-in presets.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, GrantConfig>,
    /// `[sandbox]`: profiles for `keyward run --sandbox`.
    pub sandbox: SandboxConfig,
    /// `[admin]`: who may use the admin socket besides the daemon's user.
    pub admin: AdminConfig,
    /// `[compat]`: other tools' protocols (`[compat.cavra]`).
    pub compat: CompatConfig,
    /// `[auth]`: verified CI runner identity.
    pub auth: keyward_identity::AuthConfig,
    /// `[server]`: listeners for remote callers (`[server.grpc]`).
    #[serde(skip_serializing_if = "ServerConfig::is_off")]
    pub server: ServerConfig,
}

/// `[server]`: how remote callers reach this daemon (team mode). Nothing
/// listens beyond the local socket unless a section here says so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `[server.grpc]`: the gRPC API (decisions, runs, health) for callers
    /// with an API token. Off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcConfig>,
}

impl ServerConfig {
    /// Nothing listens beyond the local socket.
    pub fn is_off(&self) -> bool {
        self.grpc.is_none()
    }
}

/// `[server.grpc]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address and port, e.g. `0.0.0.0:50051` (port 0: any free one).
    pub listen: String,
    /// Connections open at once (1 to 65536); more are closed as they
    /// arrive. A TLS handshake not done within 10 s gives its slot back.
    #[serde(default = "default_grpc_connections")]
    pub max_connections: usize,
    /// `[server.grpc.tls]`.
    #[serde(default)]
    pub tls: GrpcTlsConfig,
}

fn default_grpc_connections() -> usize {
    512
}

/// `[server.grpc.tls]`: the listener's certificate; with `client_ca_file`,
/// mutual TLS. `disable = true` serves without TLS (a loud warning at
/// start and in `keyward status`): tokens then cross the network in clear.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTlsConfig {
    /// The server's certificate chain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The CA whose client certificates are required (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// No TLS at all.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

/// `[admin]`: for a daemon running as its own user (system mode), the
/// other users it serves. The daemon's own uid and root are always served
/// and always administer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin connections open at once (processes inside runs get a quarter
    /// of them, so a run cannot lock out its owner). Read at start.
    pub max_connections: usize,
    /// Uids that may use the socket: create and end their own runs, list
    /// grants, evaluate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_uids: Vec<u32>,
    /// Groups (names or gids) whose members may use it likewise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_groups: Vec<String>,
    /// Uids that may also manage secrets, the vault, grants (reload), the
    /// CA and the daemon, and see every run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_uids: Vec<u32>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            allow_uids: Vec::new(),
            allow_groups: Vec::new(),
            admin_uids: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Whether anyone besides the daemon's user and root is served.
    pub fn serves_others(&self) -> bool {
        !(self.allow_uids.is_empty() && self.allow_groups.is_empty() && self.admin_uids.is_empty())
    }

    /// The gids of `allow_groups`, names looked up in `/etc/group`; an
    /// unknown name is an error naming it.
    pub fn allowed_gids(&self) -> Result<Vec<u32>, String> {
        let table = fs::read_to_string("/etc/group").unwrap_or_default();
        self.allow_groups
            .iter()
            .map(|group| {
                group.parse().or_else(|_| {
                    table
                        .lines()
                        .filter_map(|l| {
                            let mut f = l.split(':');
                            Some((f.next()?, f.nth(1)?))
                        })
                        .find(|(name, _)| name == group)
                        .and_then(|(_, gid)| gid.parse().ok())
                        .ok_or_else(|| format!("no group named {group:?} in /etc/group"))
                })
            })
            .collect()
    }
}

impl Config {
    /// The effective grants: presets merged with `[grants]`, validated.
    pub fn grants(&self) -> Result<BTreeMap<String, Grant>, GrantError> {
        grants::effective(&self.grants)
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Policy files (TOML), merged in order; relative paths are relative to
    /// the config file; `builtin:agent-baseline` is the built-in pack (as
    /// this keyward ships it). Empty: the built-in `agent-baseline` pack.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Sign records with HMAC-SHA256 using this key file (32+ bytes, raw or hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_key_file: Option<PathBuf>,
    /// Sign records with this Ed25519 private key (PKCS#8 PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ed25519_key_file: Option<PathBuf>,
    /// The key id written into each signature (default: derived from the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Rotate segments after this many bytes.
    pub segment_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            hmac_key_file: None,
            ed25519_key_file: None,
            key_id: None,
            segment_bytes: keyward_evidence::DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl AuditConfig {
    /// The configured signer, if any. A key in `KEYWARD_EVIDENCE_HMAC_KEY`
    /// (the daemon's environment) wins over the key files named here.
    pub fn signer(&self) -> Result<Option<keyward_evidence::Signer>, (String, String)> {
        use keyward_evidence::Signer;
        let key_id = self.key_id.as_deref();
        if let Some(from_env) = Signer::hmac_from_env(key_id) {
            return from_env
                .map(Some)
                .map_err(|e| (keyward_evidence::HMAC_KEY_ENV.to_owned(), e.message));
        }
        match (&self.hmac_key_file, &self.ed25519_key_file) {
            (Some(_), Some(_)) => Err((
                "audit".to_owned(),
                "set hmac_key_file or ed25519_key_file, not both".to_owned(),
            )),
            (Some(path), None) => Signer::hmac_from_file(path, key_id)
                .map(Some)
                .map_err(|e| ("audit.hmac_key_file".to_owned(), e.to_string())),
            (None, Some(path)) => Signer::ed25519_from_file(path, key_id)
                .map(Some)
                .map_err(|e| ("audit.ed25519_key_file".to_owned(), e.to_string())),
            (None, None) => Ok(None),
        }
    }
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Listen address; port 0 picks one on first start and keeps it.
    pub listen: String,
    /// Extra CA certificates (PEM files) trusted for upstream servers.
    pub upstream_ca: Vec<PathBuf>,
    /// Request bodies up to this many bytes are buffered so placeholders in
    /// them can be swapped; a larger body carrying a placeholder gets 413.
    pub max_substitution_body: usize,
    /// `all`: intercept every tunnel (policy sees every request);
    /// `granted`: only tunnels to hosts a grant of the run names, relaying
    /// the others byte for byte after the network check.
    pub intercept: InterceptMode,
    /// How long a client may take to send a request head (or finish the
    /// TLS handshake of a tunnel); also how long an idle HTTP/1.1
    /// keep-alive connection waits for its next request.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub header_read_timeout: Option<Duration>,
    /// How long an HTTP/2 client connection with nothing in flight stays
    /// open.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub idle_timeout: Option<Duration>,
    /// Client connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long connecting to an upstream may take.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub connect_timeout: Option<Duration>,
    /// How long an upstream may take to send its response head, and each
    /// further part of its body.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub response_header_timeout: Option<Duration>,
    /// How long a pooled upstream connection may stay idle before it is
    /// closed ([`UPSTREAM_IDLE_RANGE`]).
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub upstream_idle_timeout: Option<Duration>,
}

/// `proxy.upstream_idle_timeout`'s bounds: below a second the pool
/// reconnects for nearly every request; past an hour idle connections
/// hold the daemon's descriptors as if there were no timer.
pub const UPSTREAM_IDLE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// File descriptors a full proxy leaves to the rest of the daemon.
const RESERVED_FILES: u64 = 256;

/// The largest `proxy.max_connections`: each connection may hold a few
/// file descriptors, and the daemon needs some for everything else.
pub const MAX_PROXY_CONNECTIONS: usize = 65_536;

impl ProxyConfig {
    /// The proxy's options (the config is validated: every bound is set).
    /// With the process's open-file limit, the connection cap is lowered
    /// so that a full proxy leaves descriptors for the admin socket, the
    /// evidence log and the vault.
    pub fn options(
        &self,
        drain_timeout: Duration,
        open_file_limit: Option<u64>,
    ) -> keyward_proxy::ProxyOptions {
        let defaults = keyward_proxy::ProxyOptions::default();
        let mut max_connections = self.max_connections;
        if let Some(limit) = open_file_limit {
            // A proxied connection holds up to three: the client's socket,
            // the upstream's and a pooled upstream connection.
            let affordable = usize::try_from(limit.saturating_sub(RESERVED_FILES) / 3)
                .unwrap_or(usize::MAX)
                .max(1);
            if affordable < max_connections {
                tracing::warn!(
                    "proxy.max_connections {max_connections} lowered to {affordable}: the open-file limit is {limit}, \
                     and {RESERVED_FILES} descriptors stay reserved for the admin socket and the daemon's files"
                );
                max_connections = affordable;
            }
        }
        keyward_proxy::ProxyOptions {
            max_substitution_body: self.max_substitution_body,
            intercept: match self.intercept {
                InterceptMode::All => keyward_proxy::Intercept::All,
                InterceptMode::Granted => keyward_proxy::Intercept::Granted,
            },
            drain_timeout,
            header_read_timeout: self
                .header_read_timeout
                .unwrap_or(defaults.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
            max_connections,
            connect_timeout: self.connect_timeout.unwrap_or(defaults.connect_timeout),
            response_header_timeout: self
                .response_header_timeout
                .unwrap_or(defaults.response_header_timeout),
            upstream_idle_timeout: self
                .upstream_idle_timeout
                .unwrap_or(defaults.upstream_idle_timeout),
        }
    }
}

/// `proxy.intercept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterceptMode {
    /// Every tunnel.
    All,
    /// Only granted hosts.
    Granted,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            upstream_ca: Vec::new(),
            max_substitution_body: 1 << 20,
            intercept: InterceptMode::All,
            header_read_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(120)),
            max_connections: 1024,
            connect_timeout: Some(Duration::from_secs(30)),
            response_header_timeout: Some(Duration::from_secs(300)),
            upstream_idle_timeout: Some(Duration::from_secs(90)),
        }
    }
}

/// `[backends]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    /// How long `file:`, `cmd:` and `openbao:` values stay cached in memory;
    /// `"0"` = no caching.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub cache_ttl: Option<Duration>,
    /// How long a `cmd:` program may run.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub cmd_timeout: Option<Duration>,
    /// `[backends.openbao]`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openbao: Option<OpenBaoConfig>,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Some(Duration::from_secs(300)),
            cmd_timeout: Some(Duration::from_secs(10)),
            openbao: None,
        }
    }
}

/// `[backends.openbao]`: an OpenBao or HashiCorp Vault server (KV v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoConfig {
    /// `http(s)://HOST:PORT`
    pub addr: String,
    /// A token (secret-valued; prefer `token_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Redacted>,
    /// A file holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// AppRole role id (with `secret_id_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<String>,
    /// A file holding the AppRole secret id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id_file: Option<PathBuf>,
    /// The AppRole auth mount.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// Namespace, sent as `X-Vault-Namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Extra CA certificates (PEM) for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

/// A secret-valued setting: printed and serialized as `[REDACTED]`.
#[derive(Clone)]
pub struct Redacted(pub SecretString);

impl PartialEq for Redacted {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl Eq for Redacted {}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for Redacted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for Redacted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Redacted(SecretString::from(s)))
    }
}

impl OpenBaoConfig {
    /// Resolves `*_file` indirection and checks that exactly one way to
    /// authenticate is given. Errors name the key.
    pub fn settings(&self) -> Result<OpenBaoSettings, (&'static str, String)> {
        let auth = match (
            &self.token,
            &self.token_file,
            &self.role_id,
            &self.secret_id_file,
        ) {
            (Some(token), None, None, None) => OpenBaoAuth::Token(token.0.clone()),
            (None, Some(file), None, None) => OpenBaoAuth::Token(
                read_secret_file(file)
                    .map_err(|e| ("backends.openbao.token_file", e.to_string()))?,
            ),
            (None, None, Some(role_id), Some(secret_id_file)) => {
                if !secret_id_file.exists() {
                    return Err((
                        "backends.openbao.secret_id_file",
                        format!("{} does not exist", secret_id_file.display()),
                    ));
                }
                OpenBaoAuth::AppRole {
                    mount: self.approle_mount.clone(),
                    role_id: role_id.clone(),
                    secret_id_file: secret_id_file.clone(),
                }
            }
            (None, None, Some(_), None) => {
                return Err((
                    "backends.openbao.secret_id_file",
                    "AppRole needs secret_id_file with role_id".to_owned(),
                ));
            }
            _ => {
                return Err((
                    "backends.openbao.token",
                    "expected exactly one of token, token_file, or role_id with secret_id_file"
                        .to_owned(),
                ));
            }
        };
        let settings = OpenBaoSettings {
            addr: self.addr.clone(),
            auth,
            namespace: self.namespace.clone(),
            ca_file: self.ca_file.clone(),
        };
        // Build once to validate addr and ca_file now, not at first use.
        OpenBao::new(settings.clone()).map_err(|e| ("backends.openbao.addr", e))?;
        Ok(settings)
    }
}

/// `[vault]`: the encrypted secret store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// How many snapshots to keep (at least 1).
    pub keep: usize,
    /// Seal a passphrase vault after this long unused; `"0"` = never.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub idle_seal: Option<Duration>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            keep: 20,
            idle_seal: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// `[daemon]`: process-level settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Exit after this long with no runs and no admin requests; `"0"` or
    /// absent means never.
    #[serde(
        serialize_with = "serialize_duration_or_off",
        deserialize_with = "deserialize_duration_or_off"
    )]
    pub idle_exit: Option<Duration>,
    /// A `tracing` filter such as `"info"` or `"keyward_daemon=debug,info"`;
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// A detached daemon moves `daemon.log` to `daemon.log.1` once it is
    /// this large (checked every second); 0 means never.
    pub log_max_bytes: u64,
}

/// 16 MiB: days of ordinary traffic, and two of them fit anywhere.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            idle_exit: None,
            log_level: "info".to_owned(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

/// Settings read only when the daemon starts: a reload that changes one
/// names it (the rest of a reload applies at once: grants, policy,
/// backends, `proxy.upstream_ca`, `daemon.log_level`, `daemon.idle_exit`,
/// `daemon.log_max_bytes`, `vault.keep`, `vault.idle_seal`, `auth`,
/// `sandbox`, who may use the admin socket).
const RESTART_ONLY: &[&str] = &[
    "proxy.listen",
    "proxy.max_substitution_body",
    "proxy.intercept",
    "proxy.header_read_timeout",
    "proxy.idle_timeout",
    "proxy.max_connections",
    "proxy.connect_timeout",
    "proxy.response_header_timeout",
    "proxy.upstream_idle_timeout",
    "admin.max_connections",
    "audit.segment_bytes",
    "compat",
    "server",
];

/// The settings that differ between `old` and `new` but apply only at the
/// next start (see [`RESTART_ONLY`]), by their dotted keys; and the admin
/// socket's mode, set at start from whether it serves other users.
pub fn changes_needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old_value), Ok(new_value)) = (toml::Value::try_from(old), toml::Value::try_from(new))
    else {
        return Vec::new();
    };
    let lookup = |value: &toml::Value, key: &str| {
        key.split('.')
            .try_fold(value, |v, part| v.get(part))
            .cloned()
    };
    let mut changed: Vec<String> = RESTART_ONLY
        .iter()
        .filter(|key| lookup(&old_value, key) != lookup(&new_value, key))
        .map(|key| (*key).to_owned())
        .collect();
    if old.admin.serves_others() != new.admin.serves_others() {
        changed.push("admin (whether the socket serves other users: its mode)".to_owned());
    }
    changed
}

/// Where the config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The file path.
    pub path: PathBuf,
    /// Named by `--config`/`KEYWARD_CONFIG` (must exist) rather than the
    /// default `<home>/keyward.toml` (may be absent).
    pub explicit: bool,
}

/// A config together with whether it came from a file.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: Config,
    /// Where it was looked for.
    pub source: ConfigSource,
    /// False when the default file is absent and built-in defaults apply.
    pub from_file: bool,
    /// The effective grants (presets merged with `[grants]`), built once
    /// at load.
    pub grants: BTreeMap<String, Grant>,
    /// The compiled policy (`policy.files`, or the built-in pack).
    pub policy: Arc<Policy>,
    /// The text `policy` was compiled from: a run keeps it, so its policy
    /// stays the one it was created under.
    pub policy_sources: Arc<Vec<keyward_policy::PolicySource>>,
    /// The runner-auth verifiers built from `[auth]` (keys read, JWKS
    /// cache empty until first use).
    pub identity: Arc<keyward_identity::Identity>,
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` names a file that does not exist.
    #[error("config file {} does not exist (named by --config or KEYWARD_CONFIG)", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Not valid TOML, or a key is unknown or has the wrong type.
    #[error("invalid config file {}: {}", path.display(), describe(key, message))]
    Invalid {
        /// The path.
        path: PathBuf,
        /// The dotted key at fault, when known.
        key: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
}

fn describe(key: &Option<String>, message: &str) -> String {
    match key {
        Some(key) => format!("at `{key}`: {message}"),
        None => message.to_owned(),
    }
}

/// Loads and validates the config from `source`.
pub fn load(source: &ConfigSource) -> Result<LoadedConfig, ConfigError> {
    let text = match fs::read_to_string(&source.path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !source.explicit => {
            let config = Config::default();
            let (policy, policy_sources) = compile_policy(&config, &source.path)?;
            return Ok(LoadedConfig {
                grants: effective_grants(&config, &source.path)?,
                policy,
                policy_sources,
                identity: build_identity(&config, &source.path)?,
                config,
                source: source.clone(),
                from_file: false,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing {
                path: source.path.clone(),
            });
        }
        Err(source_err) => {
            return Err(ConfigError::Read {
                path: source.path.clone(),
                source: source_err,
            });
        }
    };
    let mut config = parse(&text, &source.path)?;
    // Policy files and the CAVRA socket are relative to the config file.
    if let Some(dir) = source.path.parent() {
        for file in &mut config.policy.files {
            if file.is_relative() && keyward_policy::builtin_name(file).is_none() {
                *file = dir.join(&*file);
            }
        }
        config.compat.resolve_relative(dir);
    }
    let (policy, policy_sources) = compile_policy(&config, &source.path)?;
    Ok(LoadedConfig {
        grants: effective_grants(&config, &source.path)?,
        policy,
        policy_sources,
        identity: build_identity(&config, &source.path)?,
        config,
        source: source.clone(),
        from_file: true,
    })
}

fn effective_grants(config: &Config, path: &Path) -> Result<BTreeMap<String, Grant>, ConfigError> {
    config
        .grants()
        .map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key: Some(key),
            message,
        })
}

/// The compiled policy and the text it was compiled from.
type CompiledPolicy = (Arc<Policy>, Arc<Vec<keyward_policy::PolicySource>>);

fn compile_policy(config: &Config, path: &Path) -> Result<CompiledPolicy, ConfigError> {
    if config.policy.files.is_empty() {
        return Ok((
            Arc::new(keyward_policy::baseline()),
            Arc::new(vec![keyward_policy::PolicySource::baseline()]),
        ));
    }
    Policy::from_files_with_sources(&config.policy.files)
        .map(|(policy, sources)| {
            // What a CAVRA policy holds that keyward cannot express.
            for warning in policy.warnings() {
                tracing::warn!("policy.files: {warning}");
            }
            (Arc::new(policy), Arc::new(sources))
        })
        .map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: Some("policy.files".to_owned()),
            message: e.to_string(),
        })
}

/// The runner-auth verifiers; files are relative to the config file, and
/// the HMAC key may come from the daemon's environment.
fn build_identity(
    config: &Config,
    path: &Path,
) -> Result<Arc<keyward_identity::Identity>, ConfigError> {
    let env_key = std::env::var(keyward_identity::HMAC_KEY_ENV).ok();
    let base = path.parent().unwrap_or(Path::new("."));
    keyward_identity::Identity::from_config(&config.auth, base, env_key.as_deref())
        .map(Arc::new)
        .map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key: Some(key),
            message,
        })
}

/// Parses and validates config text; `path` is only used in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |key: Option<String>, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| invalid(None, located(text, &e)))?;
    let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != ".").then_some(key);
        invalid(key, located(text, e.inner()))
    })?;
    validate(&config).map_err(|(key, message)| invalid(Some(key), message))?;
    Ok(config)
}

/// `[server.grpc]`: an address, and TLS files that exist (or TLS off, by
/// name).
fn validate_server(server: &ServerConfig) -> Result<(), (String, String)> {
    let Some(grpc) = &server.grpc else {
        return Ok(());
    };
    grpc.listen.parse::<std::net::SocketAddr>().map_err(|e| {
        (
            "server.grpc.listen".to_owned(),
            format!(
                "expected an address such as \"0.0.0.0:50051\", got {:?}: {e}",
                grpc.listen
            ),
        )
    })?;
    if !(1..=65536).contains(&grpc.max_connections) {
        return Err((
            "server.grpc.max_connections".to_owned(),
            format!(
                "{} is out of range; expected 1 to 65536",
                grpc.max_connections
            ),
        ));
    }
    let tls = &grpc.tls;
    if tls.disable {
        if tls.cert_file.is_some() || tls.key_file.is_some() || tls.client_ca_file.is_some() {
            return Err((
                "server.grpc.tls.disable".to_owned(),
                "TLS is off, so cert_file, key_file and client_ca_file would be ignored: \
                 remove them or remove disable"
                    .to_owned(),
            ));
        }
        return Ok(());
    }
    for (key, file) in [
        ("server.grpc.tls.cert_file", &tls.cert_file),
        ("server.grpc.tls.key_file", &tls.key_file),
    ] {
        if file.is_none() {
            return Err((
                key.to_owned(),
                "the gRPC listener needs a certificate and its key (PEM), e.g. cert_file = \
                 \"/etc/keyward/grpc.pem\", key_file = \"/etc/keyward/grpc.key\" (or \
                 disable = true to serve without TLS, on a network you trust)"
                    .to_owned(),
            ));
        }
    }
    for (key, file) in [
        ("server.grpc.tls.cert_file", &tls.cert_file),
        ("server.grpc.tls.key_file", &tls.key_file),
        ("server.grpc.tls.client_ca_file", &tls.client_ca_file),
    ] {
        if let Some(file) = file
            && !file.is_file()
        {
            return Err((
                key.to_owned(),
                format!("{} is not a readable file", file.display()),
            ));
        }
    }
    Ok(())
}

fn validate(config: &Config) -> Result<(), (String, String)> {
    config.sandbox.validate()?;
    config
        .admin
        .allowed_gids()
        .map_err(|e| ("admin.allow_groups".to_owned(), e))?;
    if !(1..=65536).contains(&config.admin.max_connections) {
        return Err((
            "admin.max_connections".to_owned(),
            format!(
                "{} is out of range; expected 1 to 65536",
                config.admin.max_connections
            ),
        ));
    }
    config.grants()?;
    validate_server(&config.server)?;
    config
        .proxy
        .listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| {
            (
                "proxy.listen".to_owned(),
                format!(
                    "expected an address such as \"127.0.0.1:0\", got {:?}: {e}",
                    config.proxy.listen
                ),
            )
        })?;
    for ca in &config.proxy.upstream_ca {
        if !ca.is_file() {
            return Err((
                "proxy.upstream_ca".to_owned(),
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    for (key, value) in [
        (
            "proxy.header_read_timeout",
            config.proxy.header_read_timeout,
        ),
        ("proxy.idle_timeout", config.proxy.idle_timeout),
        ("proxy.connect_timeout", config.proxy.connect_timeout),
        (
            "proxy.response_header_timeout",
            config.proxy.response_header_timeout,
        ),
    ] {
        if value.is_none() {
            return Err((
                key.to_owned(),
                "expected a duration above zero such as \"30s\" (a proxy without this bound \
                 can be held open by a slow client)"
                    .to_owned(),
            ));
        }
    }
    if !config
        .proxy
        .upstream_idle_timeout
        .is_some_and(|d| UPSTREAM_IDLE_RANGE.contains(&d))
    {
        return Err((
            "proxy.upstream_idle_timeout".to_owned(),
            format!(
                "expected 1s to 1h such as \"90s\", got \"{}\" (an idle upstream connection \
                 holds a descriptor until then)",
                format_duration_or_off(config.proxy.upstream_idle_timeout)
            ),
        ));
    }
    if !(1..=MAX_PROXY_CONNECTIONS).contains(&config.proxy.max_connections) {
        return Err((
            "proxy.max_connections".to_owned(),
            format!(
                "expected 1 to {MAX_PROXY_CONNECTIONS}, got {}",
                config.proxy.max_connections
            ),
        ));
    }
    if let Some(bao) = &config.backends.openbao {
        bao.settings().map_err(|(k, m)| (k.to_owned(), m))?;
    }
    if config.backends.cmd_timeout.is_none() {
        return Err((
            "backends.cmd_timeout".to_owned(),
            "expected a duration above zero such as \"10s\"".to_owned(),
        ));
    }
    config.audit.signer()?;
    config.compat.validate()?;
    if (1..4096).contains(&config.daemon.log_max_bytes) {
        return Err((
            "daemon.log_max_bytes".to_owned(),
            format!(
                "expected 0 (never rotate) or at least 4096 bytes, got {}",
                config.daemon.log_max_bytes
            ),
        ));
    }
    if config.audit.segment_bytes < 4096 {
        return Err((
            "audit.segment_bytes".to_owned(),
            format!(
                "expected at least 4096 bytes, got {}",
                config.audit.segment_bytes
            ),
        ));
    }
    if config.vault.keep == 0 {
        return Err((
            "vault.keep".to_owned(),
            "expected at least 1 snapshot to keep, got 0".to_owned(),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(&config.daemon.log_level).map_err(|e| {
        (
            "daemon.log_level".to_owned(),
            format!(
                "expected a log filter such as \"info\" or \"keyward_daemon=debug,warn\", got {:?}: {e}",
                config.daemon.log_level
            ),
        )
    })?;
    Ok(())
}

/// `line L, column C: message`, on one line (toml's own rendering spans
/// several lines with a source excerpt).
fn located(text: &str, err: &toml::de::Error) -> String {
    let message = in_toml_words(err.message().trim_end());
    let message = message.as_str();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// serde's words for what it expected, in TOML's: no Rust type names
/// (`struct InjectConfig`, `usize`, `a sequence`) reach the user.
fn in_toml_words(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("a sequence", "an array"),
        ("a map", "a table"),
        ("a boolean", "true or false"),
        ("a borrowed string", "a string"),
        ("i8", "a whole number"),
        ("i16", "a whole number"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("u8", "a whole number from 0"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0"),
        ("u64", "a whole number from 0"),
        ("usize", "a whole number from 0"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    // `expected struct Name` / `expected enum Name`: a table / one of the
    // values the message lists elsewhere.
    while let Some(at) = rest.find("expected ") {
        out.push_str(&rest[..at + "expected ".len()]);
        rest = &rest[at + "expected ".len()..];
        let word_end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ' '))
            .unwrap_or(rest.len());
        let phrase = &rest[..word_end];
        if let Some(name) = phrase.strip_prefix("struct ") {
            let name_len = name.split(' ').next().unwrap_or_default().len();
            out.push_str("a table");
            rest = &rest["struct ".len() + name_len..];
        } else if let Some(name) = phrase.strip_prefix("enum ") {
            let name_len = name.split(' ').next().unwrap_or_default().len();
            out.push_str("one of the values this key takes");
            rest = &rest["enum ".len() + name_len..];
        } else if let Some((rust, toml)) = WORDS
            .iter()
            .find(|(rust, _)| phrase.split(' ').next() == Some(rust) || phrase.starts_with(rust))
        {
            out.push_str(toml);
            rest = &rest[rust.len()..];
        }
    }
    out.push_str(rest);
    out
}

fn deserialize_duration_or_off<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration_or_off(&text).map_err(serde::de::Error::custom)
}

fn serialize_duration_or_off<S: Serializer>(
    value: &Option<Duration>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&format_duration_or_off(*value))
}

/// Parses `"90s"`, `"15m"`, `"1h 30m"`; `"0"` and `"off"` mean no duration.
pub fn parse_duration_or_off(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(format!(
            "expected a duration such as \"90s\", \"15m\" or \"0\" (off), got {text:?}: {e}"
        )),
    }
}

/// The inverse of [`parse_duration_or_off`].
pub fn format_duration_or_off(value: Option<Duration>) -> String {
    match value {
        Some(d) => humantime::format_duration(d).to_string(),
        None => "0".to_owned(),
    }
}

impl fmt::Display for Config {
    /// The effective config as TOML. Secret-valued settings are printed as
    /// `[REDACTED]` by their own `Serialize` impls.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string_pretty(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/keyward.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse_str("").unwrap(), Config::default());
    }

    #[test]
    fn daemon_section_is_read() {
        let c = parse_str("[daemon]\nidle_exit = \"90s\"\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(c.daemon.idle_exit, Some(Duration::from_secs(90)));
        assert_eq!(c.daemon.log_level, "debug");
        let c = parse_str("[daemon]\nidle_exit = \"0\"\n").unwrap();
        assert_eq!(c.daemon.idle_exit, None);
    }

    #[test]
    fn errors_speak_toml_not_rust() {
        let path = Path::new("/k.toml");
        for (text, absent, present) in [
            (
                "[grants.x]\ninject = 1\n",
                "InjectConfig",
                "expected a table",
            ),
            (
                "[audit]\nsegment_bytes = \"big\"\n",
                "u64",
                "a whole number",
            ),
            ("[vault]\nkeep = -1\n", "usize", "a whole number from 0"),
            ("[policy]\nfiles = \"x\"\n", "sequence", "an array"),
        ] {
            let err = parse(text, path).unwrap_err().to_string();
            assert!(!err.contains(absent), "{text}: {err}");
            assert!(err.contains(present), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let err = parse_str("[daemon]\nidle_exitt = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/keyward.toml"), "{err}");
        assert!(err.contains("idle_exitt"), "{err}");
        assert!(
            err.contains("at `daemon.idle_exitt`: line 2, column 1: unknown field"),
            "{err}"
        );
        let err = parse_str("[deamon]\n").unwrap_err().to_string();
        assert!(err.contains("deamon"), "{err}");
    }

    #[test]
    fn bad_duration_names_key_and_expectation() {
        let err = parse_str("[daemon]\nidle_exit = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.idle_exit"), "{err}");
        assert!(err.contains("expected a duration"), "{err}");
    }

    #[test]
    fn wrong_type_and_syntax_errors_are_clear() {
        let err = parse_str("[daemon]\nidle_exit = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.idle_exit"), "{err}");
        let err = parse_str("[daemon\n").unwrap_err().to_string();
        assert!(err.contains("/etc/keyward.toml"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn log_max_bytes_is_zero_or_a_real_size() {
        assert_eq!(
            parse_str("").unwrap().daemon.log_max_bytes,
            DEFAULT_LOG_MAX_BYTES
        );
        assert_eq!(
            parse_str("[daemon]\nlog_max_bytes = 0\n")
                .unwrap()
                .daemon
                .log_max_bytes,
            0
        );
        let err = parse_str("[daemon]\nlog_max_bytes = 100\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("daemon.log_max_bytes") && err.contains("at least 4096"),
            "{err}"
        );
    }

    #[test]
    fn bad_log_filter_is_refused() {
        let err = parse_str("[daemon]\nlog_level = \"=bogus=\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.log_level"), "{err}");
    }

    #[test]
    fn absent_default_file_means_defaults_but_absent_explicit_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.toml");
        let loaded = load(&ConfigSource {
            path: path.clone(),
            explicit: false,
        })
        .unwrap();
        assert!(!loaded.from_file);
        assert_eq!(loaded.config, Config::default());
        let err = load(&ConfigSource {
            path,
            explicit: true,
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }));
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse_str("[daemon]\nidle_exit = \"15m\"\n").unwrap();
        let printed = c.to_string();
        assert!(printed.contains("idle_exit = \"15m\""), "{printed}");
        assert_eq!(parse_str(&printed).unwrap(), c);
    }

    #[test]
    fn secret_settings_are_redacted_and_file_indirection_works() {
        let c = parse_str(
            "[backends.openbao]\naddr = \"http://127.0.0.1:8200\"\ntoken = \"s.TOPSECRET\"\n",
        )
        .unwrap();
        let printed = c.to_string();
        assert!(
            printed.contains("[REDACTED]") && !printed.contains("TOPSECRET"),
            "{printed}"
        );
        assert!(!format!("{c:?}").contains("TOPSECRET"));

        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("token");
        fs::write(&file, "s.FROMFILE\n").unwrap();
        let text = format!(
            "[backends.openbao]\naddr = \"http://127.0.0.1:8200\"\ntoken_file = \"{}\"\n",
            file.display()
        );
        let c = parse_str(&text).unwrap();
        let settings = c.backends.openbao.unwrap().settings().unwrap();
        match settings.auth {
            OpenBaoAuth::Token(t) => assert_eq!(t.expose_secret(), "s.FROMFILE"),
            other => panic!("{other:?}"),
        }
        let both = "[backends.openbao]\naddr = \"http://x:1\"\ntoken = \"a\"\nrole_id = \"r\"\n";
        let err = parse_str(both).unwrap_err().to_string();
        assert!(err.contains("exactly one of token"), "{err}");
        let missing =
            "[backends.openbao]\naddr = \"http://x:1\"\ntoken_file = \"/nonexistent/t\"\n";
        let err = parse_str(missing).unwrap_err().to_string();
        assert!(err.contains("backends.openbao.token_file"), "{err}");
    }

    #[test]
    fn grant_errors_name_the_grant_and_field() {
        let err = parse_str("[grants.ci]\nsecret = \"vault:ci\"\nhosts = [\"Bad Host\"]\ninject = { query = \"k\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("grants.ci.hosts") && err.contains("not a host pattern"),
            "{err}"
        );
    }
}
