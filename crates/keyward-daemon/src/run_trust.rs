//! Which runs the daemon trusts after a restart. A run's record is sealed
//! with a key derived from the vault's identity (with no vault yet, a key
//! in `runs.key`); a restored run gets nothing until its record is checked,
//! and a record that fails the check ends its run, loudly. With a
//! passphrase vault the key exists only while the vault is unsealed, so a
//! same-user process cannot forge a record; with a key-file vault it can
//! read the key file, as it can read the vault itself (README).

use std::path::Path;
use std::sync::Arc;

use keyward_evidence::Kind;
use keyward_vault::{Vault, VaultError};
use serde_json::json;

use crate::state::AppState;
use keyward_runs::{RunKey, RunRecord, SealCheck};

/// What the key derivation is named in the vault.
const PURPOSE: &str = "run records";

/// Where the key came from.
enum Key {
    /// The vault (unsealed).
    Vault(RunKey),
    /// `runs.key`: no vault exists.
    File(RunKey),
    /// The vault exists but is sealed.
    Sealed,
}

fn key_now(vault: &std::sync::Mutex<Vault>, key_file: &Path) -> Result<Key, String> {
    let vault = vault.lock().unwrap_or_else(|p| p.into_inner());
    match vault.mode() {
        Ok(Some(_)) => match vault.derive_key(PURPOSE) {
            Ok(key) => Ok(Key::Vault(key)),
            Err(VaultError::Sealed) => Ok(Key::Sealed),
            Err(e) => Err(e.to_string()),
        },
        // A vault directory with snapshots but no identity is a vault whose
        // key was moved away, not "no vault": the file key would let
        // whoever moved it forge records.
        Ok(None) if vault_has_history(vault.dir()) => Err(format!(
            "{} holds vault snapshots but no identity file; run records are not checked until it is restored",
            vault.dir().display()
        )),
        Ok(None) => file_key(key_file).map(Key::File),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a vault ever existed in `dir` (snapshots or a trust record).
fn vault_has_history(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".age") || name == "trust"
        })
    })
}

/// Reads `runs.key`, making it (0600, atomically) if absent.
fn file_key(path: &Path) -> Result<RunKey, String> {
    let parse = |text: &str| -> Option<RunKey> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(zeroize::Zeroizing::new(bytes.try_into().ok()?))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            parse(&text).ok_or_else(|| format!("{} does not hold a run key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: RunKey = zeroize::Zeroizing::new(rand::random());
            let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(key.as_slice())));
            keyward_vault::write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Takes the key if it can be had now; returns whether records can be
/// sealed. Runs this daemon trusts are sealed again with a new key.
pub(crate) async fn ensure_key(state: &Arc<AppState>) -> bool {
    let vault = state.vault.clone();
    let key_file = state.home.runs_key_path();
    let found = tokio::task::spawn_blocking(move || key_now(&vault, &key_file))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let (key, from_vault) = match found {
        Ok(Key::Vault(key)) => (key, true),
        Ok(Key::File(key)) => (key, false),
        Ok(Key::Sealed) => return state.runs.has_key(),
        Err(e) => {
            tracing::error!("run records cannot be sealed: {e}");
            return state.runs.has_key();
        }
    };
    if state.runs.set_key(key)
        && let Err(e) = state.runs.reseal(&state.authority.trusted())
    {
        tracing::error!("cannot seal the run records again: {e}");
    }
    if from_vault {
        // The vault gives the key from now on; the file key must not be
        // left to forge records with.
        let _ = std::fs::remove_file(state.home.runs_key_path());
    }
    true
}

/// Checks every restored run the daemon does not trust yet: a valid record
/// gets its frozen authority back; an invalid one ends its run. Without a
/// key (the vault is sealed) they wait, getting nothing.
pub(crate) async fn settle(state: &Arc<AppState>) {
    let waiting: Vec<RunRecord> = state
        .runs
        .list()
        .into_iter()
        .filter(|r| !state.authority.trusts(&r.id))
        .collect();
    if waiting.is_empty() {
        return;
    }
    if !ensure_key(state).await {
        tracing::warn!(
            runs = waiting.len(),
            "restored runs get nothing until the vault is unsealed (keyward vault unseal) and their records are checked"
        );
        return;
    }
    for run in waiting {
        let failure = match state.runs.check(&run) {
            // The sealed pid must still be the process the run was tied to
            // (a pid is reused; a replayed record names a dead one).
            SealCheck::Valid
                if run.pid.is_some()
                    && run.pid.and_then(keyward_runs::process_start) != run.pid_start =>
            {
                "its process is gone (its pid now names another process, or none)".to_owned()
            }
            SealCheck::Valid => match state.authority.restore(&run) {
                Ok(()) => {
                    tracing::info!(run = run.id, "restored run checked; its authority is as it was created");
                    continue;
                }
                Err(e) => e.to_string(),
            },
            SealCheck::Invalid => "its record fails the integrity check (it was edited, forged, or sealed with another key)".to_owned(),
            SealCheck::Unknown => continue,
        };
        end_untrusted(state, &run, &failure);
    }
}

/// Ends a run whose record cannot be trusted. Nothing in the record is
/// used: its processes are found by cgroup (the sweep ends every process
/// in a run cgroup whose run no longer exists).
fn end_untrusted(state: &Arc<AppState>, run: &RunRecord, why: &str) {
    if let Err(e) = state.runs.remove_untrusted(&run.id) {
        tracing::error!("{e}");
    }
    state.authority.forget(&run.id);
    state.brokers.end(&run.id);
    state.exit_watchers.end(&run.id);
    tracing::error!(run = run.id, "run ended: {why}");
    eprintln!("keyward: run {} ended: {why}", run.id);
    state.evidence.record(
        Kind::Run,
        Some(run.id.clone()),
        json!({"event": "run_ended", "why": format!("record not trusted: {why}")}),
    );
    sweep(state);
}

/// Ends the processes of run cgroups whose run does not exist.
pub(crate) fn sweep(state: &Arc<AppState>) {
    if let Some(cgroups) = state.cgroups.clone() {
        let runs = state.runs.clone();
        tokio::task::spawn_blocking(move || cgroups.sweep(&|id| runs.get(id).is_some()));
    }
}
