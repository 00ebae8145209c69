//! Secret references: how a grant names its secret.
//!
//! `vault:NAME`, `env:VAR`, `file:/path`, `cmd:PROGRAM ARGS`,
//! `openbao:MOUNT/PATH#FIELD`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::name::validate_name;

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// A secret in the local vault.
    Vault(String),
    /// A variable of the daemon's environment.
    Env(String),
    /// A file's contents, trimmed.
    File(PathBuf),
    /// The stdout of a program run without a shell. Arguments are split on
    /// whitespace; there is no quoting.
    Cmd {
        /// The program (looked up in `PATH` when it has no `/`).
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A field of a KV v2 secret on OpenBao / Vault.
    OpenBao {
        /// The KV v2 mount, e.g. `secret`.
        mount: String,
        /// The path under the mount.
        path: String,
        /// The field of the secret's data.
        field: String,
    },
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret reference {text:?}: {reason}")]
pub struct RefError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

impl FromStr for SecretRef {
    type Err = RefError;

    fn from_str(text: &str) -> Result<Self, RefError> {
        let fail = |reason: &str| RefError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = text.split_once(':') else {
            return Err(fail(
                "expected SCHEME:VALUE with scheme vault, env, file, cmd or openbao (e.g. vault:github)",
            ));
        };
        match scheme {
            "vault" => {
                validate_name(rest).map_err(|e| fail(&e.to_string()))?;
                Ok(SecretRef::Vault(rest.to_owned()))
            }
            "env" => {
                let ok = !rest.is_empty()
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !rest.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(fail("env: needs a variable name of letters, digits and _"));
                }
                Ok(SecretRef::Env(rest.to_owned()))
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(fail(
                        "file: needs an absolute path, e.g. file:/run/secrets/token",
                    ));
                }
                Ok(SecretRef::File(PathBuf::from(rest)))
            }
            "cmd" => {
                let mut words = rest.split_whitespace().map(str::to_owned);
                let program = words
                    .next()
                    .ok_or_else(|| fail("cmd: needs a program, e.g. cmd:gh auth token"))?;
                Ok(SecretRef::Cmd {
                    program,
                    args: words.collect(),
                })
            }
            "openbao" => {
                let (location, field) = rest.split_once('#').ok_or_else(|| {
                    fail("openbao: needs MOUNT/PATH#FIELD, e.g. openbao:secret/ci/github#token")
                })?;
                let (mount, path) = location.split_once('/').ok_or_else(|| {
                    fail("openbao: needs MOUNT/PATH#FIELD (no / after the mount)")
                })?;
                if mount.is_empty() || path.is_empty() || field.is_empty() {
                    return Err(fail("openbao: MOUNT, PATH and FIELD must all be non-empty"));
                }
                if path.split('/').any(|seg| seg.is_empty() || seg == "..") {
                    return Err(fail("openbao: PATH has an empty or `..` segment"));
                }
                Ok(SecretRef::OpenBao {
                    mount: mount.to_owned(),
                    path: path.to_owned(),
                    field: field.to_owned(),
                })
            }
            other => Err(fail(&format!(
                "unknown secret scheme `{other}:` (expected vault:, env:, file:, cmd: or openbao:)"
            ))),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Vault(name) => write!(f, "vault:{name}"),
            SecretRef::Env(var) => write!(f, "env:{var}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Cmd { program, args } => {
                write!(f, "cmd:{program}")?;
                for arg in args {
                    write!(f, " {arg}")?;
                }
                Ok(())
            }
            SecretRef::OpenBao { mount, path, field } => {
                write!(f, "openbao:{mount}/{path}#{field}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_round_trips() {
        for text in [
            "vault:github-token",
            "env:GH_TOKEN",
            "file:/run/secrets/t",
            "cmd:gh auth token",
            "openbao:secret/ci/github#token",
        ] {
            let r: SecretRef = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        assert_eq!(
            "cmd:gh auth token".parse::<SecretRef>().unwrap(),
            SecretRef::Cmd {
                program: "gh".into(),
                args: vec!["auth".into(), "token".into()]
            }
        );
    }

    #[test]
    fn bad_references_say_why() {
        for (text, needle) in [
            ("github", "SCHEME:VALUE"),
            ("s3:bucket", "unknown secret scheme `s3:`"),
            ("vault:Bad", "invalid secret name"),
            ("env:1X", "variable name"),
            ("file:relative", "absolute path"),
            ("cmd:", "needs a program"),
            ("openbao:secret#f", "no / after the mount"),
            ("openbao:secret/a", "MOUNT/PATH#FIELD"),
            ("openbao:secret/a/../b#f", "`..`"),
        ] {
            let err = text.parse::<SecretRef>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
