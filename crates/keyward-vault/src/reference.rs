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
    /// The stdout of a program run without a shell. Words are split on
    /// whitespace, with shell-style quoting: `'...'` literal, `"..."` with
    /// `\"` and `\\`, and `\` before any character outside quotes. There
    /// is no expansion of any kind (`$`, `~`, `*` are plain characters).
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
                let mut words = split_words(rest).map_err(|e| fail(&e))?.into_iter();
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
                write!(f, "cmd:{}", quote_word(program))?;
                for arg in args {
                    write!(f, " {}", quote_word(arg))?;
                }
                Ok(())
            }
            SecretRef::OpenBao { mount, path, field } => {
                write!(f, "openbao:{mount}/{path}#{field}")
            }
        }
    }
}

/// Splits a `cmd:` line into words (see [`SecretRef::Cmd`]).
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("cmd: has a ' without its closing '".to_owned()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => {
                                return Err("cmd: has a \" without its closing \"".to_owned());
                            }
                        },
                        Some(c) => w.push(c),
                        None => return Err("cmd: has a \" without its closing \"".to_owned()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("cmd: ends with a lone \\".to_owned()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// A word as [`split_words`] reads it back: single-quoted when it holds
/// anything but plain characters.
fn quote_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | '\\'));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
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
    fn cmd_words_are_quoted_like_a_shell_without_expansion() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "cmd:op read 'op://Private/GitHub Token/credential'",
                &["op", "read", "op://Private/GitHub Token/credential"],
            ),
            (
                r#"cmd:sh -c "echo \"hi\" \\ $HOME""#,
                &["sh", "-c", r#"echo "hi" \ $HOME"#],
            ),
            (r"cmd:printf a\ b", &["printf", "a b"]),
            ("cmd:x '' \"\" ~ *", &["x", "", "", "~", "*"]),
            ("cmd:x 'it'\\''s'", &["x", "it's"]),
            ("cmd:  gh\tauth   token  ", &["gh", "auth", "token"]),
        ];
        for (text, words) in cases {
            let r: SecretRef = text.parse().unwrap();
            let SecretRef::Cmd { program, args } = &r else {
                panic!("{text}: {r:?}");
            };
            let got: Vec<&str> = std::iter::once(program.as_str())
                .chain(args.iter().map(String::as_str))
                .collect();
            assert_eq!(got, words, "{text}");
            // What Display prints parses back to the same reference.
            assert_eq!(r.to_string().parse::<SecretRef>().unwrap(), r, "{text}");
        }
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
            ("cmd:   ", "needs a program"),
            ("cmd:op read 'x", "without its closing '"),
            ("cmd:op read \"x", "without its closing \""),
            ("cmd:op read \"x\\", "without its closing \""),
            ("cmd:op read x\\", "lone \\"),
            ("openbao:secret#f", "no / after the mount"),
            ("openbao:secret/a", "MOUNT/PATH#FIELD"),
            ("openbao:secret/a/../b#f", "`..`"),
        ] {
            let err = text.parse::<SecretRef>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
