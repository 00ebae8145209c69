//! `[sandbox]`: the profiles `keyward run --sandbox` may add to the
//! built-in one (planned by the daemon crate's `sandbox`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[sandbox]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `[sandbox.profiles.NAME]`: paths added to the built-in profile.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, SandboxProfile>,
}

/// One profile: absolute paths (or `~/...`) a sandboxed program may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxProfile {
    /// Readable.
    pub read: Vec<PathBuf>,
    /// Readable and writable.
    pub write: Vec<PathBuf>,
    /// Readable and executable.
    pub exec: Vec<PathBuf>,
}

impl SandboxConfig {
    /// Checks the profiles: every path absolute or `~/...`. Returns the
    /// dotted key at fault and what was expected.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, profile) in &self.profiles {
            for (field, paths) in [
                ("read", &profile.read),
                ("write", &profile.write),
                ("exec", &profile.exec),
            ] {
                for path in paths {
                    if !(path.is_absolute() || path.starts_with("~")) {
                        return Err((
                            format!("sandbox.profiles.{name}.{field}"),
                            format!(
                                "{} is relative; expected an absolute path or ~/...",
                                path.display()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_profile_paths_are_config_errors() {
        let config = SandboxConfig {
            profiles: BTreeMap::from([(
                "x".to_owned(),
                SandboxProfile {
                    write: vec!["rel/dir".into()],
                    ..Default::default()
                },
            )]),
        };
        let (key, message) = config.validate().unwrap_err();
        assert_eq!(key, "sandbox.profiles.x.write");
        assert!(message.contains("rel/dir"), "{message}");
    }
}
