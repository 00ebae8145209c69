//! Editing `keyward.toml` in place (toml_edit), keeping the user's comments
//! and layout. Every edit is validated as a whole config before it is
//! written, atomically.

use std::io;
use std::path::Path;

use keyward_vault::write_atomic;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, value};

use crate::ConfigError;
use crate::grants::{GrantConfig, InjectConfig};

/// Why an edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file, or the file as it would be, is not a valid config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The grant exists and `replace` was not asked for.
    #[error("grant {name} already exists in {path}; pass --replace to overwrite it")]
    Exists {
        /// The grant.
        name: String,
        /// The config file.
        path: String,
    },
    /// `grant rm` names no grant of the file.
    #[error("no grant named {name} in {path}{known}")]
    Missing {
        /// The grant.
        name: String,
        /// The config file.
        path: String,
        /// `; its grants are: a, b` or what else the name is.
        known: String,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The config file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Writes `[grants.NAME]` into the config file at `path` (created if
/// absent), keeping everything else as it was.
pub fn add_grant(
    path: &Path,
    name: &str,
    grant: &GrantConfig,
    replace: bool,
) -> Result<(), EditError> {
    let mut doc = open_for_edit(path)?;

    let grants = doc
        .entry("grants")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid {
            path: path.to_owned(),
            key: Some("grants".to_owned()),
            message: "expected a table".to_owned(),
        })?;
    if grants.contains_key(name) && !replace {
        return Err(EditError::Exists {
            name: name.to_owned(),
            path: path.display().to_string(),
        });
    }
    grants.insert(name, Item::Table(grant_table(grant)));

    write_edited(path, &doc)
}

/// Removes `[grants.NAME]` from the config file at `path`, keeping
/// everything else as it was. A built-in preset not named in the file has
/// nothing to remove (said).
pub fn remove_grant(path: &Path, name: &str) -> Result<(), EditError> {
    let mut doc = open_for_edit(path)?;
    let grants = doc.get_mut("grants").and_then(Item::as_table_like_mut);
    let removed = match grants {
        Some(grants) => grants.remove(name).is_some(),
        None => false,
    };
    if !removed {
        let names: Vec<String> = doc
            .get("grants")
            .and_then(Item::as_table_like)
            .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
            .unwrap_or_default();
        let known = if crate::grants::presets().contains_key(name) {
            format!("; {name} is a built-in preset, which is not in the file and cannot be removed")
        } else if names.is_empty() {
            "; it has no grants".to_owned()
        } else {
            format!("; its grants are: {}", names.join(", "))
        };
        return Err(EditError::Missing {
            name: name.to_owned(),
            path: path.display().to_string(),
            known,
        });
    }
    write_edited(path, &doc)
}

/// The config file at `path` (absent: empty) as an editable document;
/// a file that is already broken is refused, so the user sees why.
fn open_for_edit(path: &Path) -> Result<DocumentMut, EditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }
            .into());
        }
    };
    crate::parse(&text, path)?;
    Ok(text
        .parse()
        .map_err(|e: toml_edit::TomlError| ConfigError::Invalid {
            path: path.to_owned(),
            key: None,
            message: e.message().to_owned(),
        })?)
}

/// Writes `doc` to `path` atomically, once it is a valid config as a whole.
fn write_edited(path: &Path, doc: &DocumentMut) -> Result<(), EditError> {
    let new_text = doc.to_string();
    crate::parse(&new_text, path)?;
    write_atomic(path, new_text.as_bytes()).map_err(|e| EditError::Write {
        path: path.display().to_string(),
        source: io::Error::other(e.to_string()),
    })
}

fn grant_table(grant: &GrantConfig) -> Table {
    let mut t = Table::new();
    if let Some(preset) = &grant.preset {
        t["preset"] = value(preset.as_str());
    }
    if let Some(secret) = &grant.secret {
        t["secret"] = value(secret.as_str());
    }
    if let Some(hosts) = &grant.hosts {
        t["hosts"] = value(hosts.iter().map(String::as_str).collect::<Array>());
    }
    if let Some(inject) = &grant.inject {
        t["inject"] = value(inject_table(inject));
    }
    if let Some(var) = &grant.placeholder_env {
        t["placeholder_env"] = value(var.as_str());
    }
    if let Some(plaintext) = grant.plaintext {
        t["plaintext"] = value(plaintext);
    }
    if let Some(substitute_body) = grant.substitute_body {
        t["substitute_body"] = value(substitute_body);
    }
    if let Some(public_suffix) = grant.public_suffix {
        t["public_suffix"] = value(public_suffix);
    }
    t
}

fn inject_table(inject: &InjectConfig) -> InlineTable {
    let mut t = InlineTable::new();
    if let Some(header) = &inject.header {
        t.insert("header", header.as_str().into());
    }
    if let Some(format) = &inject.format {
        t.insert("format", format.as_str().into());
    }
    if let Some(basic) = &inject.basic {
        let mut b = InlineTable::new();
        b.insert("username", basic.username.as_str().into());
        t.insert("basic", b.into());
    }
    if let Some(query) = &inject.query {
        t.insert("query", query.as_str().into());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::BasicConfig;

    fn grant() -> GrantConfig {
        GrantConfig {
            secret: Some("vault:ci".into()),
            hosts: Some(vec!["api.example.com".into()]),
            inject: Some(InjectConfig {
                header: Some("Authorization".into()),
                format: Some("Bearer {secret}".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn remove_keeps_the_rest_and_names_what_it_cannot_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.toml");
        std::fs::write(&path, "# mine\n[proxy]\nintercept = \"all\"\n").unwrap();
        add_grant(&path, "one", &grant(), false).unwrap();
        add_grant(&path, "two", &grant(), false).unwrap();
        remove_grant(&path, "one").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n[proxy]\n"), "{text}");
        assert!(
            !text.contains("[grants.one]") && text.contains("[grants.two]"),
            "{text}"
        );
        let err = remove_grant(&path, "one").unwrap_err().to_string();
        assert!(
            err.contains("no grant named one") && err.contains("its grants are: two"),
            "{err}"
        );
        let err = remove_grant(&path, "github").unwrap_err().to_string();
        assert!(err.contains("built-in preset"), "{err}");
        // A broken file is left as it is, with the reason.
        std::fs::write(&path, "[grants.x]\nhosts = 1\n").unwrap();
        assert!(remove_grant(&path, "x").is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[grants.x]\nhosts = 1\n"
        );
    }

    #[test]
    fn keeps_comments_and_refuses_duplicates_and_invalid_grants() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyward.toml");
        std::fs::write(
            &path,
            "# my settings\n[daemon]\nidle_exit = \"1h\" # long\n",
        )
        .unwrap();
        add_grant(&path, "ci", &grant(), false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# my settings") && text.contains("# long"),
            "{text}"
        );
        assert!(text.contains("[grants.ci]"), "{text}");
        let parsed = crate::parse(&text, &path).unwrap();
        assert_eq!(parsed.grants["ci"], grant());

        assert!(matches!(
            add_grant(&path, "ci", &grant(), false),
            Err(EditError::Exists { .. })
        ));
        let basic = GrantConfig {
            inject: Some(InjectConfig {
                basic: Some(BasicConfig {
                    username: "x".into(),
                }),
                ..Default::default()
            }),
            ..grant()
        };
        add_grant(&path, "ci", &basic, true).unwrap();

        let before = std::fs::read_to_string(&path).unwrap();
        let bad = GrantConfig {
            hosts: Some(vec![]),
            ..grant()
        };
        let err = add_grant(&path, "other", &bad, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grants.other.hosts"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            before,
            "nothing written"
        );
    }
}
