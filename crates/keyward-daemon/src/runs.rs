//! The run registry: who may use the proxy, with which grants. Tokens are
//! kept only as SHA-256 hashes; `runs.json` holds no secret.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use keyward_api::{CreateRunRequest, Network, RunInfo};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a process stands with respect to runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// No run's process is among its ancestors.
    Outside,
    /// Inside this run.
    Inside(String),
    /// Cannot be told (gone, unreadable); treated as confined.
    Unknown(&'static str),
}

/// Format version of `runs.json`.
const RUNS_VERSION: u32 = 1;

/// One run, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `run_` + 12 hex.
    pub id: String,
    /// Free text.
    pub label: Option<String>,
    /// Grant names.
    pub grants: Vec<String>,
    /// Allowed host patterns.
    pub allow: Vec<String>,
    /// Network mode.
    pub network: Network,
    /// The run's process.
    pub pid: Option<u32>,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// Placeholder variables: name -> placeholder (not secret).
    #[serde(default)]
    pub placeholders: BTreeMap<String, String>,
    /// The run's own policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// What confines the run's processes, as its `keyward run` reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<String>,
    /// The uid that created it: other non-admin users do not see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Started with an fd broker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker: bool,
    /// Started with base-URL endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_url: bool,
    /// The CI runner identity verified when the run was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<keyward_identity::RunnerClaims>,
}

impl RunRecord {
    /// The public view.
    pub fn info(&self) -> RunInfo {
        RunInfo {
            run_id: self.id.clone(),
            label: self.label.clone(),
            grants: self.grants.clone(),
            allow: self.allow.clone(),
            network: self.network,
            pid: self.pid,
            policy: self.policy.clone(),
            created_at: self.created_at.clone(),
            confinement: self.confinement.clone(),
            broker: self.broker,
            base_url: self.base_url,
            runner: self.runner.as_ref().map(|c| {
                c.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            }),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RunsFile {
    version: u32,
    runs: Vec<RunRecord>,
}

/// Why the registry could not load or save.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// `runs.json` is not readable as runs.
    #[error("{} cannot be read: {reason}; move it away to start with no runs", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot save {}: {reason}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The registry. Lookups by token hash are a map access, then a
/// constant-time comparison.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    runs: Mutex<HashMap<String, RunRecord>>,
    /// Serializes saves so the file always ends with the latest state.
    save_lock: Mutex<()>,
    /// Bumped after every change.
    changes: AtomicU64,
    /// The change count the file reflects.
    saved: AtomicU64,
}

fn hex_random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Registry {
    /// Loads `path` (absent: no runs).
    pub fn load(path: &Path) -> Result<Self, RunsError> {
        let corrupt = |reason: String| RunsError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let runs = match std::fs::read(path) {
            Ok(bytes) => {
                let file: RunsFile =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.version != RUNS_VERSION {
                    return Err(corrupt(format!("unsupported version {}", file.version)));
                }
                file.runs.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        Ok(Self {
            path: path.to_owned(),
            runs: Mutex::new(runs),
            save_lock: Mutex::new(()),
            changes: AtomicU64::new(0),
            saved: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunRecord>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a run (grants already validated) and returns it with its
    /// token, which is not kept.
    pub fn create(
        &self,
        req: &CreateRunRequest,
        placeholder_vars: &[String],
        uid: u32,
    ) -> Result<(RunRecord, String), RunsError> {
        let token = hex_random(32);
        let id = format!("run_{}", hex_random(6));
        let placeholders = placeholder_vars
            .iter()
            .map(|var| (var.clone(), format!("kw_ph_{}", hex_random(16))))
            .collect();
        let record = RunRecord {
            id: id.clone(),
            label: req.label.clone(),
            grants: req.grants.clone(),
            allow: req.allow.clone(),
            network: req.network,
            pid: req.pid,
            token_sha256: token_hash(&token),
            placeholders,
            policy: req.policy.clone(),
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            confinement: req.confinement.clone(),
            uid: Some(uid),
            broker: req.broker,
            base_url: req.base_url,
            runner: None,
        };
        self.lock().insert(id, record.clone());
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.save()?;
        Ok((record, token))
    }

    /// The id of the run a token belongs to (no record copied: this is on
    /// the proxy's per-request path).
    pub fn id_for_token(&self, token: &str) -> Option<String> {
        let hash = token_hash(token);
        self.lock()
            .values()
            .find(|r| constant_time_eq(r.token_sha256.as_bytes(), hash.as_bytes()))
            .map(|r| r.id.clone())
    }

    /// One run.
    pub fn get(&self, id: &str) -> Option<RunRecord> {
        self.lock().get(id).cloned()
    }

    /// All runs, oldest first.
    pub fn list(&self) -> Vec<RunRecord> {
        let mut runs: Vec<_> = self.lock().values().cloned().collect();
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        runs
    }

    /// How many runs exist.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no run exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets a run's pid.
    pub fn set_pid(&self, id: &str, pid: Option<u32>) -> Result<Option<RunRecord>, RunsError> {
        let updated = self.lock().get_mut(id).map(|r| {
            r.pid = pid;
            r.clone()
        });
        if updated.is_some() {
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.save()?;
        }
        Ok(updated)
    }

    /// Binds a run to the runner identity verified for it.
    pub fn bind_runner(
        &self,
        id: &str,
        runner: keyward_identity::RunnerClaims,
    ) -> Result<Option<RunRecord>, RunsError> {
        let updated = self.lock().get_mut(id).map(|r| {
            r.runner = Some(runner);
            r.clone()
        });
        if updated.is_some() {
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.save()?;
        }
        Ok(updated)
    }

    /// Removes a run, revoking its token at once.
    pub fn remove(&self, id: &str) -> Result<bool, RunsError> {
        let removed = self.lock().remove(id).is_some();
        if removed {
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.save()?;
        }
        Ok(removed)
    }

    /// Removes runs whose process has exited; returns their ids.
    pub fn reap(&self) -> Result<Vec<String>, RunsError> {
        let dead: Vec<String> = self
            .lock()
            .values()
            .filter(|r| r.pid.is_some_and(|pid| !keyward_sys::process_exists(pid)))
            .map(|r| r.id.clone())
            .collect();
        if !dead.is_empty() {
            let mut runs = self.lock();
            for id in &dead {
                runs.remove(id);
            }
            self.changes.fetch_add(1, Ordering::SeqCst);
            drop(runs);
            self.save()?;
        }
        Ok(dead)
    }

    /// The run whose process is `pid` or one of its ancestors.
    pub fn confining(&self, pid: u32) -> Option<String> {
        match self.membership(Some(pid), None) {
            Membership::Inside(id) => Some(id),
            Membership::Outside | Membership::Unknown(_) => None,
        }
    }

    /// Where the process `pid` stands: inside a run when a run's pid is the
    /// process itself or one of its ancestors. `keyward run` is a child
    /// subreaper, so a run's processes cannot leave its ancestry by double
    /// forking or `setsid`. A process that is gone, or whose ancestry cannot
    /// be read, is `Unknown`, which callers treat as confined. `pidfd`, when
    /// the kernel gave one for the connection, makes sure the pid read is
    /// still the process that connected (a pid can be reused; a pidfd not).
    pub fn membership(&self, pid: Option<u32>, pidfd: Option<&OwnedFd>) -> Membership {
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return Membership::Unknown("its process id is not visible to the daemon");
        };
        let gone = || match pidfd {
            Some(fd) => keyward_sys::pidfd_has_exited(fd),
            None => !keyward_sys::process_exists(pid),
        };
        if gone() {
            return Membership::Unknown("the process that connected has exited");
        }
        let pids: HashMap<u32, String> = self
            .lock()
            .values()
            .filter_map(|r| r.pid.map(|p| (p, r.id.clone())))
            .collect();
        let mut current = pid;
        let mut steps = 0;
        let found = loop {
            steps += 1;
            if steps > 4096 {
                break Membership::Unknown("its ancestry is too deep");
            }
            if let Some(id) = pids.get(&current) {
                break Membership::Inside(id.clone());
            }
            if current == 1 {
                break Membership::Outside;
            }
            match parent_of(current) {
                Some(0) => break Membership::Outside,
                Some(parent) if parent != current => current = parent,
                _ => break Membership::Unknown("its ancestry cannot be read"),
            }
        };
        // Read after the walk: had the process exited meanwhile, its pid
        // (and so the ancestry read) could belong to another process.
        if gone() {
            return Membership::Unknown("the process that connected has exited");
        }
        found
    }

    /// Writes the runs, debounced: callers that changed the registry while
    /// a save was running wait for the next one, and if a save that began
    /// after their change has already written it, they return at once; so
    /// a burst of changes costs a couple of writes, and each caller still
    /// hears about a failed write of its own change.
    fn save(&self) -> Result<(), RunsError> {
        let mine = self.changes.load(Ordering::SeqCst);
        let _saving = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.saved.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        // Read the count before the snapshot: the snapshot holds at least
        // every change counted.
        let current = self.changes.load(Ordering::SeqCst);
        let file = RunsFile {
            version: RUNS_VERSION,
            runs: self.list(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| RunsError::Save {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        keyward_vault::write_atomic(&self.path, &bytes).map_err(|e| RunsError::Save {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.saved.store(current, Ordering::SeqCst);
        Ok(())
    }
}

/// The parent pid, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid of a process, from `/proc/<pid>/status`.
pub(crate) fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` is `ancestor` or one of its descendants.
pub(crate) fn is_self_or_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    // Bounded: a chain of parents ends at init long before this.
    for _ in 0..4096 {
        if current == ancestor {
            return true;
        }
        match parent_of(current) {
            Some(parent) if parent != current && parent != 0 => current = parent,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debounced saves lose no change: after a burst of concurrent
    /// creations and removals the file holds exactly the surviving runs.
    #[test]
    fn concurrent_changes_all_reach_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let reg = std::sync::Arc::new(Registry::load(&path).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for j in 0..10 {
                        let (run, _) = reg.create(&CreateRunRequest::default(), &[], 0).unwrap();
                        if (i + j) % 3 == 0 {
                            assert!(reg.remove(&run.id).unwrap());
                        } else {
                            kept.push(run.id);
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        kept.sort();
        let mut on_disk: Vec<String> = Registry::load(&path)
            .unwrap()
            .list()
            .into_iter()
            .map(|r| r.id)
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, kept);
    }

    #[test]
    fn tokens_are_stored_hashed_and_runs_persist() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let reg = Registry::load(&path).unwrap();
        let req = CreateRunRequest {
            grants: vec!["github".into()],
            label: Some("agent".into()),
            ..Default::default()
        };
        let (run, token) = reg.create(&req, &["GH_TOKEN".to_owned()], 0).unwrap();
        assert!(run.id.starts_with("run_") && run.id.len() == 16);
        assert_eq!(token.len(), 64);
        assert!(run.placeholders["GH_TOKEN"].starts_with("kw_ph_"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "token persisted");
        assert!(text.contains(&token_hash(&token)));

        let reloaded = Registry::load(&path).unwrap();
        assert_eq!(reloaded.id_for_token(&token), Some(run.id.clone()));
        assert!(reloaded.id_for_token("nope").is_none());
        assert!(reloaded.remove(&run.id).unwrap());
        assert!(reloaded.id_for_token(&token).is_none());
    }

    #[test]
    fn dead_runs_are_reaped_and_descendants_are_confined() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::load(&tmp.path().join("runs.json")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let parent = std::process::id();
        let (run, _) = reg
            .create(
                &CreateRunRequest {
                    pid: Some(parent),
                    ..Default::default()
                },
                &[],
                0,
            )
            .unwrap();
        // Our child descends from the run's pid.
        assert_eq!(reg.confining(child.id()), Some(run.id.clone()));
        assert_eq!(reg.confining(1), None);
        child.kill().unwrap();
        child.wait().unwrap();

        let (dead_run, _) = reg
            .create(
                &CreateRunRequest {
                    pid: Some(child.id()),
                    ..Default::default()
                },
                &[],
                0,
            )
            .unwrap();
        assert_eq!(reg.reap().unwrap(), vec![dead_run.id]);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn corrupt_runs_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Registry::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("runs.json") && err.contains("move it away"),
            "{err}"
        );
    }
}
