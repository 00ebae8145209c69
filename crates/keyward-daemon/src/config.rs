//! `keyward.toml`: loaded, resolved and validated before anything binds.
//!
//! Unknown keys are errors naming the key; every error names the file, the
//! key and what was expected, and maps to exit status 64 in the CLI.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration. Sections are added by later layers; each has
/// working defaults so no file is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[daemon]`
    pub daemon: DaemonConfig,
    /// `[vault]`
    pub vault: VaultConfig,
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
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            idle_exit: None,
            log_level: "info".to_owned(),
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: Config,
    /// Where it was looked for.
    pub source: ConfigSource,
    /// False when the default file is absent and built-in defaults apply.
    pub from_file: bool,
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
    /// A secret-valued setting's file cannot be used.
    #[error("cannot read the secret file {} for `{key}`: {reason}", path.display())]
    SecretFile {
        /// The setting, e.g. `backends.openbao.token_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
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
            return Ok(LoadedConfig {
                config: Config::default(),
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
    let config = parse(&text, &source.path)?;
    Ok(LoadedConfig {
        config,
        source: source.clone(),
        from_file: true,
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
    validate(&config).map_err(|(key, message)| invalid(Some(key.to_owned()), message))?;
    Ok(config)
}

fn validate(config: &Config) -> Result<(), (&'static str, String)> {
    if config.vault.keep == 0 {
        return Err((
            "vault.keep",
            "expected at least 1 snapshot to keep, got 0".to_owned(),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(&config.daemon.log_level).map_err(|e| {
        (
            "daemon.log_level",
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
    let message = err.message().trim_end();
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

/// Reads a secret-valued setting's `*_file`: the contents, trailing newline
/// trimmed. A file readable by group or others is accepted with a warning
/// naming it, because refusing would break common setups (e.g. a mounted
/// secret) while the warning tells the user what to fix.
pub fn read_secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let fail = |reason: String| ConfigError::SecretFile {
        key: key.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            setting = key,
            "secret file has mode {mode:o} and is readable beyond its owner; run `chmod 600 {}`",
            path.display()
        );
    }
    let text = fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(fail("the file is empty".to_owned()));
    }
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

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
    fn secret_file_is_trimmed_and_warns_but_accepts_loose_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("token");
        fs::write(&path, "s3cr3t-value\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let secret = read_secret_file("backends.x.token_file", &path).unwrap();
        assert_eq!(secret.expose_secret(), "s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"));

        fs::write(&path, "\n").unwrap();
        let err = read_secret_file("backends.x.token_file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty") && err.contains("backends.x.token_file"),
            "{err}"
        );
        let err = read_secret_file("k", &tmp.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }
}
