//! keyward's runs. The run registry (this module): who may use the proxy,
//! with which grants. Tokens are kept only as SHA-256 hashes; `runs.json`
//! holds no secret. Around it: what each run may use ([`authority`],
//! [`frozen`]), where its processes are ([`cgroup`]), what it leaves running
//! ([`tasks`]), what went wrong for it ([`report`]), and the bridge out of
//! a sandboxed run's network ([`net_bridge`]) and what a sandboxed run may
//! touch ([`sandbox`]).
#![forbid(unsafe_code)]

pub mod activity;
pub mod authority;
pub mod cgroup;
pub mod frozen;
pub mod net_bridge;
pub mod report;
pub mod sandbox;
pub mod tasks;

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

mod journal;
mod seal;

use journal::Change;
pub use seal::RunKey;

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

/// Who creates a run: the caller's uid, and in team mode the API token's
/// user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The caller's uid.
    pub uid: u32,
    /// The token's user, when the request carried one.
    pub token_user: Option<String>,
}

impl From<u32> for Owner {
    fn from(uid: u32) -> Self {
        Self {
            uid,
            token_user: None,
        }
    }
}

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
    /// What the run may use, as resolved when it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<FrozenAuthority>,
    /// The API token's user that created the run (team mode): a token
    /// without the `admin` scope sees and ends only its user's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_user: Option<String>,
    /// The cgroup (v2) holding the run's processes, relative to the
    /// cgroup2 mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The cgroup the run's `keyward run` came from, where it goes back
    /// when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_origin: Option<String>,
    /// When the run's process started (clock ticks since boot): a record
    /// whose pid now names another process is not that run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The run's private TMPDIR, removed when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_tmp: Option<String>,
    /// Hex HMAC-SHA256 over what gives the run authority (see `seal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// A run's authority as it was created: each grant as one explicit config
/// table, and the SHA-256 of each text its policy was compiled from (the
/// texts are kept in the home's `policies/`, by digest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenAuthority {
    /// Grant name -> the grant as it was.
    pub grants: BTreeMap<String, keyward_config::grants::GrantConfig>,
    /// Hex SHA-256 of each policy source, in order.
    pub policy: Vec<String>,
}

/// What the check of a run record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealCheck {
    /// Authentic.
    Valid,
    /// Edited, forged, or never sealed.
    Invalid,
    /// No key yet (the vault is sealed): cannot tell.
    Unknown,
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
            problems: Vec::new(),
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

/// The registry. A token is found through its SHA-256 in an index, so the
/// proxy's lookup on every request does not grow with the number of runs.
/// Every change is on disk before it returns (see [`journal`]).
#[derive(Debug)]
pub struct Registry {
    store: journal::Store,
    state: Mutex<State>,
    /// Journal lines appended, counted under the lock, in order.
    appended: AtomicU64,
    /// Journal lines known to be on disk.
    synced: AtomicU64,
    /// One sync (or fold) at a time: callers arriving meanwhile wait and
    /// mostly find their line synced by it (group commit).
    syncing: Mutex<()>,
    /// The key records are sealed with, once the vault gave it.
    key: std::sync::RwLock<Option<RunKey>>,
    /// The runs' cgroups, where the kernel lets the daemon make them.
    cgroups: std::sync::OnceLock<std::sync::Arc<crate::cgroup::RunCgroups>>,
}

#[derive(Debug)]
struct State {
    runs: HashMap<String, RunRecord>,
    /// Token SHA-256 -> run id.
    by_token: HashMap<String, String>,
    journal: journal::Journal,
    /// The disk lacks a change the memory has (an append failed, or a fold
    /// did not finish): the next sync folds, writing every run.
    must_fold: bool,
}

impl State {
    fn insert(&mut self, run: RunRecord) {
        self.by_token
            .insert(run.token_sha256.clone(), run.id.clone());
        self.runs.insert(run.id.clone(), run);
    }

    fn remove(&mut self, id: &str) -> Option<RunRecord> {
        let run = self.runs.remove(id)?;
        self.by_token.remove(&run.token_sha256);
        Some(run)
    }
}

/// The journal is folded into the snapshot once it has more lines than
/// this, or than twice the runs: a fold writes every run, so it comes
/// once per that many changes.
const FOLD_AFTER: usize = 1024;

fn hex_random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Registry {
    /// Loads the runs of the snapshot at `path` (absent: none) and its
    /// journal.
    pub fn load(path: &Path) -> Result<Self, RunsError> {
        let store = journal::Store::new(path);
        let (runs, journal) = store.load()?;
        let mut state = State {
            runs: HashMap::new(),
            by_token: HashMap::new(),
            journal,
            must_fold: store.fold_unfinished(),
        };
        for run in runs.into_values() {
            state.insert(run);
        }
        Ok(Self {
            store,
            state: Mutex::new(state),
            appended: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncing: Mutex::new(()),
            key: std::sync::RwLock::new(None),
            cgroups: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a change: `edit` changes the runs and says what to journal
    /// (appended under the same lock, so the journal's order is the
    /// memory's); returns once that is on disk.
    fn change<R>(&self, edit: impl FnOnce(&mut State) -> (R, Vec<Change>)) -> Result<R, RunsError> {
        let (result, mine) = {
            let mut state = self.lock();
            let (result, changes) = edit(&mut state);
            if changes.is_empty() {
                return Ok(result);
            }
            let state = &mut *state;
            if let Err(e) = self.store.append(&mut state.journal, &changes) {
                state.must_fold = true;
                return Err(e);
            }
            let lines = changes.len() as u64;
            (
                result,
                self.appended.fetch_add(lines, Ordering::SeqCst) + lines,
            )
        };
        self.sync(mine)?;
        Ok(result)
    }

    /// Returns once journal line `mine` is on disk: synced by this call,
    /// or by another that began after it was appended.
    fn sync(&self, mine: u64) -> Result<(), RunsError> {
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let (file, upto, fold) = {
            let state = self.lock();
            let fold =
                state.must_fold || state.journal.lines > FOLD_AFTER.max(2 * state.runs.len());
            (
                state.journal.file(),
                self.appended.load(Ordering::SeqCst),
                fold,
            )
        };
        if fold {
            return self.fold();
        }
        self.store.sync(&file)?;
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Writes every run as the snapshot and starts the journal afresh. The
    /// registry is locked to copy the runs and swap journals, not while
    /// writing.
    fn fold(&self) -> Result<(), RunsError> {
        let (runs, upto) = {
            let mut state = self.lock();
            // An unfinished fold's old journal stays until a snapshot that
            // holds it is written; the journal then only repeats changes.
            if !self.store.fold_unfinished() {
                self.store.rotate(&mut state.journal)?;
            }
            state.must_fold = false;
            let runs: Vec<RunRecord> = state.runs.values().cloned().collect();
            (runs, self.appended.load(Ordering::SeqCst))
        };
        if let Err(e) = self.store.write_snapshot(runs) {
            self.lock().must_fold = true;
            return Err(e);
        }
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    fn key(&self) -> std::sync::RwLockReadGuard<'_, Option<RunKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether records can be sealed and checked.
    pub fn has_key(&self) -> bool {
        self.key().is_some()
    }

    /// Sets the key records are sealed with. Returns whether it changed.
    pub fn set_key(&self, key: RunKey) -> bool {
        let mut current = self.key.write().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|k| k.as_slice() == key.as_slice())
        {
            return false;
        }
        *current = Some(key);
        true
    }

    /// Seals a record with the current key (left unsealed without one).
    fn sealed(&self, mut run: RunRecord) -> RunRecord {
        run.seal = self.key().as_ref().map(|key| seal::seal(key, &run));
        run
    }

    /// Checks a run's record against the key.
    pub fn check(&self, run: &RunRecord) -> SealCheck {
        match self.key().as_ref() {
            None => SealCheck::Unknown,
            Some(key) if seal::verify(key, run) => SealCheck::Valid,
            Some(_) => SealCheck::Invalid,
        }
    }

    /// Seals again, with the current key, the runs this daemon trusts
    /// (`trusted`): those it created, or whose record it checked.
    pub fn reseal(&self, trusted: &[String]) -> Result<(), RunsError> {
        self.change(|state| {
            let mut changes = Vec::new();
            for id in trusted {
                if let Some(run) = state.runs.get(id) {
                    let sealed = self.sealed(run.clone());
                    if sealed.seal != run.seal {
                        changes.push(Change::Put(Box::new(sealed.clone())));
                        state.insert(sealed);
                    }
                }
            }
            ((), changes)
        })
    }

    /// Registers a run (grants already validated) for `owner` and returns it
    /// with its token, which is not kept.
    pub fn create(
        &self,
        req: &CreateRunRequest,
        placeholder_vars: &[String],
        owner: impl Into<Owner>,
        authority: FrozenAuthority,
    ) -> Result<(RunRecord, String), RunsError> {
        let owner = owner.into();
        let token = hex_random(32);
        let id = format!("run_{}", hex_random(6));
        let placeholders = placeholder_vars
            .iter()
            .map(|var| (var.clone(), format!("kw_ph_{}", hex_random(16))))
            .collect();
        let record = RunRecord {
            id,
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
            uid: Some(owner.uid),
            token_user: owner.token_user,
            broker: req.broker,
            base_url: req.base_url,
            runner: None,
            authority: Some(authority),
            cgroup: None,
            cgroup_origin: None,
            pid_start: req.pid.and_then(process_start),
            private_tmp: req.private_tmp.clone(),
            seal: None,
        };
        let record = self.sealed(record);
        self.change(|state| {
            state.insert(record.clone());
            ((), vec![Change::Put(Box::new(record.clone()))])
        })?;
        Ok((record, token))
    }

    /// The id of the run a token belongs to (no record copied: this is on
    /// the proxy's per-request path).
    pub fn id_for_token(&self, token: &str) -> Option<String> {
        self.lock().by_token.get(&token_hash(token)).cloned()
    }

    /// One run.
    pub fn get(&self, id: &str) -> Option<RunRecord> {
        self.lock().runs.get(id).cloned()
    }

    /// All runs, oldest first.
    pub fn list(&self) -> Vec<RunRecord> {
        let mut runs: Vec<_> = self.lock().runs.values().cloned().collect();
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        runs
    }

    /// How many runs exist.
    pub fn len(&self) -> usize {
        self.lock().runs.len()
    }

    /// Whether no run exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes one run's record.
    fn update(
        &self,
        id: &str,
        edit: impl FnOnce(&mut RunRecord),
    ) -> Result<Option<RunRecord>, RunsError> {
        self.change(|state| match state.runs.get_mut(id) {
            Some(run) => {
                edit(run);
                *run = self.sealed(run.clone());
                (Some(run.clone()), vec![Change::Put(Box::new(run.clone()))])
            }
            None => (None, Vec::new()),
        })
    }

    /// Sets a run's pid.
    pub fn set_pid(&self, id: &str, pid: Option<u32>) -> Result<Option<RunRecord>, RunsError> {
        self.update(id, |run| {
            run.pid = pid;
            run.pid_start = pid.and_then(process_start);
        })
    }

    /// Records the cgroup holding the run's processes.
    pub fn set_cgroup(
        &self,
        id: &str,
        cgroup: String,
        origin: String,
    ) -> Result<Option<RunRecord>, RunsError> {
        self.update(id, |run| {
            run.cgroup = Some(cgroup);
            run.cgroup_origin = Some(origin);
        })
    }

    /// Finds runs by cgroup from now on.
    pub fn use_cgroups(&self, cgroups: std::sync::Arc<crate::cgroup::RunCgroups>) {
        let _ = self.cgroups.set(cgroups);
    }

    /// Binds a run to the runner identity verified for it.
    pub fn bind_runner(
        &self,
        id: &str,
        runner: keyward_identity::RunnerClaims,
    ) -> Result<Option<RunRecord>, RunsError> {
        self.update(id, |run| run.runner = Some(runner))
    }

    /// Removes a run, revoking its token at once; returns its record. Its
    /// cgroup is then the caller's to end (`RunCgroups::end`, which spares
    /// the run's own `keyward run`), not the sweep's.
    pub fn remove(&self, id: &str) -> Result<Option<RunRecord>, RunsError> {
        self.remove_marked(id, true)
    }

    /// Removes a run whose record is not trusted: nothing in it is used,
    /// and its cgroup is left to the sweep, which ends every process in it.
    pub fn remove_untrusted(&self, id: &str) -> Result<Option<RunRecord>, RunsError> {
        self.remove_marked(id, false)
    }

    fn remove_marked(&self, id: &str, mark: bool) -> Result<Option<RunRecord>, RunsError> {
        let cgroups = self.cgroups.get().filter(|_| mark);
        self.change(|state| {
            if let Some(cgroups) = cgroups
                && state.runs.get(id).is_some_and(|r| r.cgroup.is_some())
            {
                cgroups.mark_ending(id);
            }
            match state.remove(id) {
                Some(run) => (Some(run), vec![Change::Remove(id.to_owned())]),
                None => (None, Vec::new()),
            }
        })
    }

    /// Removes runs whose process has exited; returns their records.
    pub fn reap(&self) -> Result<Vec<RunRecord>, RunsError> {
        self.change(|state| {
            let dead: Vec<String> = state
                .runs
                .values()
                .filter(|r| r.pid.is_some_and(|pid| !keyward_sys::process_exists(pid)))
                .map(|r| r.id.clone())
                .collect();
            if let Some(cgroups) = self.cgroups.get() {
                for id in &dead {
                    if state.runs.get(id).is_some_and(|r| r.cgroup.is_some()) {
                        cgroups.mark_ending(id);
                    }
                }
            }
            let ended: Vec<RunRecord> = dead.iter().filter_map(|id| state.remove(id)).collect();
            let changes = dead.into_iter().map(Change::Remove).collect();
            (ended, changes)
        })
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
        // A run's cgroup holds its processes whatever they did to their
        // ancestry, and outlives `keyward run` and daemon restarts.
        if let Some(run_id) = self.cgroups.get().and_then(|c| c.run_of(pid)) {
            let found = match self.lock().runs.contains_key(&run_id) {
                true => Membership::Inside(run_id),
                false => Membership::Unknown("it is left over from a run that has ended"),
            };
            if gone() {
                return Membership::Unknown("the process that connected has exited");
            }
            return found;
        }
        let pids: HashMap<u32, String> = self
            .lock()
            .runs
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
}

/// The parent pid, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// When a process started (clock ticks since boot, `/proc/<pid>/stat`
/// field 22): with its pid, what names one process, since pids are reused.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The real uid of a process, from `/proc/<pid>/status`.
pub fn process_uid(pid: u32) -> Option<u32> {
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
pub fn is_self_or_descendant(pid: u32, ancestor: u32) -> bool {
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
    use std::fs::OpenOptions;
    use std::io::Write;

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
                        let (run, _) = reg
                            .create(&CreateRunRequest::default(), &[], 0, Default::default())
                            .unwrap();
                        if (i + j) % 3 == 0 {
                            assert!(reg.remove(&run.id).unwrap().is_some());
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

    /// A sealed record checks; any change to what it covers, a record
    /// sealed with another key, or an unsealed one does not; without a key
    /// nothing can be told.
    #[test]
    fn run_records_are_sealed_and_edits_are_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::load(&tmp.path().join("runs.json")).unwrap();
        let frozen = FrozenAuthority {
            grants: BTreeMap::new(),
            policy: vec!["ab".repeat(32)],
        };
        let (unsealed, _) = reg
            .create(&CreateRunRequest::default(), &[], 0, frozen.clone())
            .unwrap();
        assert_eq!(reg.check(&unsealed), SealCheck::Unknown);
        assert!(reg.set_key(zeroize::Zeroizing::new([7; 32])));
        assert_eq!(reg.check(&unsealed), SealCheck::Invalid, "never sealed");
        reg.reseal(std::slice::from_ref(&unsealed.id)).unwrap();
        let run = reg.get(&unsealed.id).unwrap();
        assert_eq!(reg.check(&run), SealCheck::Valid);
        type Edit = Box<dyn Fn(&mut RunRecord)>;
        let edits: Vec<Edit> = vec![
            Box::new(|r| {
                r.network = match r.network {
                    Network::Permissive => Network::Strict,
                    Network::Strict => Network::Permissive,
                }
            }),
            Box::new(|r| r.allow.push("evil.example".into())),
            Box::new(|r| r.grants.push("github".into())),
            Box::new(|r| r.token_sha256 = token_hash("mine")),
            Box::new(|r| r.authority.as_mut().unwrap().policy[0] = "cd".repeat(32)),
            Box::new(|r| r.cgroup = Some("/elsewhere".into())),
            Box::new(|r| r.uid = Some(1234)),
            Box::new(|r| r.seal = None),
        ];
        for edit in edits {
            let mut forged = run.clone();
            edit(&mut forged);
            assert_eq!(reg.check(&forged), SealCheck::Invalid, "{forged:?}");
        }
        let mut moved = run.clone();
        moved.pid = Some(1);
        assert_eq!(reg.check(&moved), SealCheck::Invalid, "pid");
        // Not covered: what widens nothing.
        let mut relabelled = run.clone();
        relabelled.label = Some("relabelled".into());
        assert_eq!(reg.check(&relabelled), SealCheck::Valid);
        // Another key.
        let other = Registry::load(&tmp.path().join("other.json")).unwrap();
        other.set_key(zeroize::Zeroizing::new([8; 32]));
        assert_eq!(other.check(&run), SealCheck::Invalid);
        // Changes made through the registry stay sealed.
        let changed = reg.set_pid(&run.id, Some(43)).unwrap().unwrap();
        assert_eq!(reg.check(&changed), SealCheck::Valid);
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
        let (run, token) = reg
            .create(&req, &["GH_TOKEN".to_owned()], 0, Default::default())
            .unwrap();
        assert!(run.id.starts_with("run_") && run.id.len() == 16);
        assert_eq!(token.len(), 64);
        assert!(run.placeholders["GH_TOKEN"].starts_with("kw_ph_"));
        let text = std::fs::read_to_string(tmp.path().join("runs.json.journal")).unwrap();
        assert!(!text.contains(&token), "token persisted");
        assert!(text.contains(&token_hash(&token)));

        let reloaded = Registry::load(&path).unwrap();
        assert_eq!(reloaded.id_for_token(&token), Some(run.id.clone()));
        assert!(reloaded.id_for_token("nope").is_none());
        assert!(reloaded.remove(&run.id).unwrap().is_some());
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
                Default::default(),
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
                Default::default(),
            )
            .unwrap();
        assert_eq!(
            reg.reap()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![dead_run.id]
        );
        assert_eq!(reg.len(), 1);
    }

    fn ids_on_disk(path: &Path) -> Vec<String> {
        let mut ids: Vec<String> = Registry::load(path)
            .unwrap()
            .list()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }

    /// Past its limit the journal is folded into the snapshot, and a
    /// registry loaded at any point (snapshot, old journal, journal) holds
    /// exactly the runs acknowledged: an interrupted fold and an append a
    /// crash cut short lose nothing acknowledged.
    #[test]
    fn the_journal_folds_into_the_snapshot_and_nothing_is_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let journal = tmp.path().join("runs.json.journal");
        let reg = Registry::load(&path).unwrap();
        let mut kept = Vec::new();
        for i in 0..FOLD_AFTER + 100 {
            let (run, _) = reg
                .create(&CreateRunRequest::default(), &[], 0, Default::default())
                .unwrap();
            if i % 3 == 0 {
                assert!(reg.remove(&run.id).unwrap().is_some());
            } else {
                kept.push(run.id);
            }
        }
        // Created long before the fold (ids are random: not the first in
        // sorted order).
        let first_kept = kept[0].clone();
        kept.sort();
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(
            lines < FOLD_AFTER,
            "the journal was never folded: {lines} lines"
        );
        let snapshot = std::fs::read_to_string(&path).unwrap();
        assert!(snapshot.contains(&first_kept), "{snapshot}");
        assert!(!tmp.path().join("runs.json.journal.old").exists());
        assert_eq!(ids_on_disk(&path), kept);

        // A fold cut short after its rotation: the old journal is replayed.
        drop(reg);
        std::fs::rename(&journal, tmp.path().join("runs.json.journal.old")).unwrap();
        assert_eq!(ids_on_disk(&path), kept);
        let reg = Registry::load(&path).unwrap();
        let (run, _) = reg
            .create(&CreateRunRequest::default(), &[], 0, Default::default())
            .unwrap();
        kept.push(run.id);
        kept.sort();
        assert_eq!(ids_on_disk(&path), kept);

        // An append cut short by a crash (no newline) is dropped, and the
        // next append does not land behind it.
        drop(reg);
        let mut file = OpenOptions::new().append(true).open(&journal).unwrap();
        file.write_all(b"{\"put\":{\"id\":\"run_half").unwrap();
        assert_eq!(ids_on_disk(&path), kept);
        let reg = Registry::load(&path).unwrap();
        assert!(reg.remove(&kept.remove(0)).unwrap().is_some());
        assert_eq!(ids_on_disk(&path), kept);
    }

    /// A journal removed from under the registry does not stop it: the
    /// next fold writes every run and starts a fresh journal.
    #[test]
    fn a_removed_journal_is_started_afresh_at_the_next_fold() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let reg = Registry::load(&path).unwrap();
        let (kept, _) = reg
            .create(&CreateRunRequest::default(), &[], 0, Default::default())
            .unwrap();
        std::fs::remove_file(tmp.path().join("runs.json.journal")).unwrap();
        for _ in 0..FOLD_AFTER / 2 + 1 {
            let (run, _) = reg
                .create(&CreateRunRequest::default(), &[], 0, Default::default())
                .unwrap();
            assert!(reg.remove(&run.id).unwrap().is_some());
        }
        assert!(tmp.path().join("runs.json.journal").exists());
        assert_eq!(ids_on_disk(&path), vec![kept.id]);
    }

    /// A removal is as durable as a registration: a reloaded registry does
    /// not bring back a removed run's token.
    #[test]
    fn a_removed_token_stays_revoked_after_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let reg = Registry::load(&path).unwrap();
        let (run, token) = reg
            .create(&CreateRunRequest::default(), &[], 0, Default::default())
            .unwrap();
        let (other, other_token) = reg
            .create(&CreateRunRequest::default(), &[], 0, Default::default())
            .unwrap();
        assert!(reg.remove(&run.id).unwrap().is_some());
        let reloaded = Registry::load(&path).unwrap();
        assert_eq!(reloaded.id_for_token(&token), None);
        assert_eq!(reloaded.id_for_token(&other_token), Some(other.id));
    }

    #[test]
    fn a_corrupt_journal_line_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let reg = Registry::load(&path).unwrap();
        reg.create(&CreateRunRequest::default(), &[], 0, Default::default())
            .unwrap();
        drop(reg);
        let journal = tmp.path().join("runs.json.journal");
        let mut file = OpenOptions::new().append(true).open(&journal).unwrap();
        file.write_all(b"{\"put\":17}\n").unwrap();
        let err = Registry::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("runs.json.journal")
                && err.contains("line 2")
                && err.contains("move it away"),
            "{err}"
        );
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
