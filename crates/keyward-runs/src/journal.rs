//! How the run registry reaches the disk: `runs.json`, a snapshot written
//! atomically, and `runs.json.journal`, the changes made since, one JSON
//! line each, appended and synced before a change is acknowledged. A
//! change costs one short append, however many runs there are; the
//! journal is folded into a new snapshot once it outgrows the runs.
//!
//! Folding renames the journal to `runs.json.journal.old` and starts a
//! fresh one (both under the registry's lock, so no change falls between
//! them), writes the snapshot, then removes the old journal. Loading
//! replays the old journal, then the journal, over the snapshot; a change
//! replayed over a snapshot that already holds it ends the same, since
//! each line states a run's whole record or its removal. The last line
//! of a journal that ends without a newline is an append a crash cut
//! short (it was never acknowledged) and is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{RUNS_VERSION, RunRecord, RunsError, RunsFile};

/// One change, as a journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    /// A run created or changed: its whole record.
    Put(Box<RunRecord>),
    /// A run removed.
    Remove(String),
}

/// The registry's files.
#[derive(Debug)]
pub(super) struct Store {
    snapshot: PathBuf,
    journal: PathBuf,
    old: PathBuf,
}

/// The journal open for appending.
#[derive(Debug)]
pub(super) struct Journal {
    /// Shared with a sync made outside the registry's lock.
    file: Arc<File>,
    /// Bytes written: an append that fails is cut back to here.
    len: u64,
    /// Lines written: what decides when to fold.
    pub(super) lines: usize,
}

fn save_err(path: &Path) -> impl Fn(std::io::Error) -> RunsError + '_ {
    move |e| RunsError::Save {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl Store {
    pub(super) fn new(snapshot: &Path) -> Self {
        let name = snapshot
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            snapshot: snapshot.to_owned(),
            journal: snapshot.with_file_name(format!("{name}.journal")),
            old: snapshot.with_file_name(format!("{name}.journal.old")),
        }
    }

    /// The runs as last acknowledged, and the journal to append to (a
    /// tail a crash cut short is cut off first).
    pub(super) fn load(&self) -> Result<(HashMap<String, RunRecord>, Journal), RunsError> {
        let corrupt = |path: &Path, reason: String| RunsError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let mut runs: HashMap<String, RunRecord> = match std::fs::read(&self.snapshot) {
            Ok(bytes) => {
                let file: RunsFile = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(&self.snapshot, e.to_string()))?;
                if file.version != RUNS_VERSION {
                    return Err(corrupt(
                        &self.snapshot,
                        format!("unsupported version {}", file.version),
                    ));
                }
                file.runs.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(corrupt(&self.snapshot, e.to_string())),
        };
        replay(&self.old, &mut runs)?;
        let (lines, complete) = replay(&self.journal, &mut runs)?;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.journal)
            .map_err(save_err(&self.journal))?;
        file.set_len(complete).map_err(save_err(&self.journal))?;
        // The journal's name must last as long as what is synced into it.
        sync_dir(&self.snapshot)?;
        Ok((
            runs,
            Journal {
                file: Arc::new(file),
                len: complete,
                lines,
            },
        ))
    }

    /// Appends `changes` (not synced: see [`Journal::sync`]). A failed
    /// append is cut back, so the journal never holds half a line.
    pub(super) fn append(
        &self,
        journal: &mut Journal,
        changes: &[Change],
    ) -> Result<(), RunsError> {
        let mut bytes = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut bytes, change).map_err(|e| RunsError::Save {
                path: self.journal.clone(),
                reason: e.to_string(),
            })?;
            bytes.push(b'\n');
        }
        if let Err(e) = (&*journal.file).write_all(&bytes) {
            let _ = journal.file.set_len(journal.len);
            return Err(save_err(&self.journal)(e));
        }
        journal.len += bytes.len() as u64;
        journal.lines += changes.len();
        Ok(())
    }

    /// Makes what was appended so far durable.
    pub(super) fn sync(&self, journal: &File) -> Result<(), RunsError> {
        journal.sync_data().map_err(save_err(&self.journal))
    }

    /// Whether a fold began and did not finish (its old journal is still
    /// there): the next fold must first make a snapshot that holds it.
    pub(super) fn fold_unfinished(&self) -> bool {
        self.old.exists()
    }

    /// Starts a fold: the journal becomes the old journal, and a fresh one
    /// takes its place. Call with the registry locked, so the snapshot
    /// taken under the same lock holds every change of the old journal.
    pub(super) fn rotate(&self, journal: &mut Journal) -> Result<(), RunsError> {
        match std::fs::rename(&self.journal, &self.old) {
            Ok(()) => {}
            // Removed from under the daemon: the snapshot about to be
            // written holds every run, and a fresh journal takes over.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.journal.display(), "the runs journal was removed; writing every run anew");
            }
            Err(e) => return Err(save_err(&self.journal)(e)),
        }
        let fresh = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.journal);
        match fresh {
            Ok(file) => {
                *journal = Journal {
                    file: Arc::new(file),
                    len: 0,
                    lines: 0,
                };
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::rename(&self.old, &self.journal);
                Err(save_err(&self.journal)(e))
            }
        }
    }

    /// Finishes a fold: writes `runs` as the snapshot (atomically: its
    /// directory sync also makes the rotation durable), then removes the
    /// old journal, whose changes the snapshot holds.
    pub(super) fn write_snapshot(&self, mut runs: Vec<RunRecord>) -> Result<(), RunsError> {
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let file = RunsFile {
            version: RUNS_VERSION,
            runs,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| RunsError::Save {
            path: self.snapshot.clone(),
            reason: e.to_string(),
        })?;
        keyward_vault::write_atomic(&self.snapshot, &bytes).map_err(|e| RunsError::Save {
            path: self.snapshot.clone(),
            reason: e.to_string(),
        })?;
        match std::fs::remove_file(&self.old) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(save_err(&self.old)(e)),
        }
    }
}

impl Journal {
    /// The file, for a sync outside the registry's lock.
    pub(super) fn file(&self) -> Arc<File> {
        self.file.clone()
    }
}

/// Applies the journal at `path` (absent: nothing) to `runs`; returns its
/// complete lines and the bytes they take.
fn replay(path: &Path, runs: &mut HashMap<String, RunRecord>) -> Result<(usize, u64), RunsError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => {
            return Err(RunsError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - complete,
            "dropping the end of the runs journal: an append a crash cut short (never acknowledged)"
        );
    }
    let mut lines = 0;
    for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let change: Change = serde_json::from_slice(line).map_err(|e| RunsError::Corrupt {
            path: path.to_owned(),
            reason: format!("line {}: {e}", n + 1),
        })?;
        match change {
            Change::Put(run) => runs.insert(run.id.clone(), *run),
            Change::Remove(id) => runs.remove(&id),
        };
        lines += 1;
    }
    Ok((lines, complete as u64))
}

/// Syncs the directory holding `path`, so names created or renamed in it
/// last.
fn sync_dir(path: &Path) -> Result<(), RunsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(save_err(dir))
}
