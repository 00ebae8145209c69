//! A run's authority, frozen when it is created: its grants as they were
//! resolved and the policy it was created under. Kept with the run's
//! (sealed) record, the policy's text in the home's `policies/` by SHA-256,
//! so that a daemon restarted after the config was edited restores each run
//! exactly as it was, never as the edited config would make it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyward_policy::{Policy, PolicySource};
use sha2::{Digest, Sha256};

use crate::{FrozenAuthority, RunRecord};
use keyward_config::LoadedConfig;
use keyward_config::grants::Grant;

/// A run's authority in memory: what the proxy and the evaluate API use.
pub struct Frozen {
    pub grants: BTreeMap<String, Grant>,
    pub policy: Arc<Policy>,
}

/// Why a run's authority cannot be frozen or restored.
#[derive(Debug, thiserror::Error)]
pub enum FrozenError {
    /// The run's own policy file does not load (as `policy check` says).
    #[error("{0}")]
    Invalid(String),
    #[error("the run's policy {0}")]
    Policy(String),
    #[error("grant {name}: {key}: {message}")]
    Grant {
        name: String,
        key: String,
        message: String,
    },
    #[error("cannot keep the run's policy text in {}: {source}", dir.display())]
    Store {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the record holds no frozen authority (made by an older keyward)")]
    Missing,
}

/// Freezes what a new run gets: `grants` from the loaded config, and its
/// own policy file (`policy`) or the configured policy. The policy's text
/// is stored in `store` before the run exists.
pub fn freeze(
    config: &LoadedConfig,
    grants: &[String],
    policy: Option<&str>,
    store: &Path,
) -> Result<(FrozenAuthority, Arc<Frozen>), FrozenError> {
    let grants: BTreeMap<String, Grant> = grants
        .iter()
        .filter_map(|name| Some((name.clone(), config.grants.get(name)?.clone())))
        .collect();
    let (sources, policy) = match policy {
        Some(path) => {
            let (source, _) = PolicySource::resolve(Path::new(path))
                .map_err(|e| FrozenError::Invalid(e.to_string()))?;
            let sources = vec![source];
            let policy =
                Policy::from_sources(&sources).map_err(|e| FrozenError::Invalid(e.to_string()))?;
            (sources, Arc::new(policy))
        }
        None => (
            config.policy_sources.as_ref().clone(),
            config.policy.clone(),
        ),
    };
    let digests = sources
        .iter()
        .map(|source| keep_source(store, source))
        .collect::<Result<Vec<_>, _>>()?;
    let record = FrozenAuthority {
        grants: grants
            .iter()
            .map(|(name, grant)| (name.clone(), grant.frozen()))
            .collect(),
        policy: digests,
    };
    Ok((record, Arc::new(Frozen { grants, policy })))
}

/// Rebuilds a run's authority from its record (already checked against
/// its seal) and the policy texts it names.
pub fn restore(run: &RunRecord, store: &Path) -> Result<Arc<Frozen>, FrozenError> {
    let record = run.authority.as_ref().ok_or(FrozenError::Missing)?;
    let grants = record
        .grants
        .iter()
        .map(|(name, table)| {
            Grant::thaw(name, table)
                .map(|g| (name.clone(), g))
                .map_err(|(key, message)| FrozenError::Grant {
                    name: name.clone(),
                    key,
                    message,
                })
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let sources = record
        .policy
        .iter()
        .map(|digest| read_source(store, digest))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = Policy::from_sources(&sources).map_err(|e| FrozenError::Policy(e.to_string()))?;
    Ok(Arc::new(Frozen {
        grants,
        policy: Arc::new(policy),
    }))
}

fn digest(source: &PolicySource) -> String {
    let mut hash = Sha256::new();
    hash.update(source.origin.as_bytes());
    hash.update([0]);
    hash.update(source.toml.as_bytes());
    hex::encode(hash.finalize())
}

/// Stores a policy text under its digest (once; written atomically) and
/// returns the digest.
fn keep_source(store: &Path, source: &PolicySource) -> Result<String, FrozenError> {
    let digest = digest(source);
    let path = store.join(format!("{digest}.json"));
    if path.exists() {
        return Ok(digest);
    }
    let fail = |source| FrozenError::Store {
        dir: store.to_owned(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(store)
            .map_err(fail)?;
    }
    let bytes = serde_json::to_vec(source).expect("a policy source serializes");
    keyward_vault::write_atomic(&path, &bytes)
        .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    Ok(digest)
}

/// Reads a stored policy text, checking it is the one the digest names.
fn read_source(store: &Path, digest: &str) -> Result<PolicySource, FrozenError> {
    let path = store.join(format!("{digest}.json"));
    let bytes = std::fs::read(&path)
        .map_err(|e| FrozenError::Policy(format!("text {} cannot be read: {e}", path.display())))?;
    let source: PolicySource = serde_json::from_slice(&bytes)
        .map_err(|e| FrozenError::Policy(format!("text {} is damaged: {e}", path.display())))?;
    if self::digest(&source) != digest {
        return Err(FrozenError::Policy(format!(
            "text {} was changed after the run was created",
            path.display()
        )));
    }
    Ok(source)
}

/// Removes stored policy texts no run names any more.
pub fn prune(store: &Path, runs: &[RunRecord]) {
    let kept: std::collections::HashSet<String> = runs
        .iter()
        .filter_map(|r| r.authority.as_ref())
        .flat_map(|a| a.policy.iter().map(|d| format!("{d}.json")))
        .collect();
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !kept.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
