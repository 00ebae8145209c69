//! Ending runs: what a run holds is revoked and what it leaves on the
//! machine removed, when its process exits (watched by a pidfd, or found
//! by the periodic reap) or when it is removed over the API.

use std::sync::Arc;

use keyward_evidence::Kind;
use keyward_runs::RunRecord;
use serde_json::json;

use crate::state::AppState;

/// What a run holds besides its record: its resolved credentials, its fd
/// broker, the watcher of its process; and what it leaves on the machine:
/// the processes in its cgroup and its private TMPDIR, ended and removed
/// here whatever happened to its `keyward run`.
pub(crate) fn release(state: &AppState, run: &RunRecord) {
    state.authority.forget(&run.id);
    state.run_reports.take(&run.id);
    state.brokers.end(&run.id);
    state.exit_watchers.end(&run.id);
    let cgroups = state.cgroups.clone();
    let run = run.clone();
    // Off the async workers: ending a cgroup waits for its processes to go.
    tokio::task::spawn_blocking(move || end_leftovers(cgroups.as_deref(), &run));
}

/// Ends what a run left: the processes in its cgroup (its `keyward run`
/// spared, moved back where it came from) and its private TMPDIR.
fn end_leftovers(cgroups: Option<&keyward_runs::cgroup::RunCgroups>, run: &RunRecord) {
    if let (Some(cgroups), Some(cgroup)) = (cgroups, &run.cgroup) {
        let spare = run.pid.zip(run.cgroup_origin.as_deref());
        let ended = cgroups.end(cgroup, spare, run.pid_start);
        if ended > 0 {
            tracing::info!(
                run = run.id,
                processes = ended,
                "ended the processes the run left"
            );
        }
    }
    // Only a directory of the daemon's own user: one of another user (a
    // root daemon serving other uids) is theirs to remove, which their
    // `keyward run` does when the run ends; removing it here would act on
    // a path that user controls with the daemon's privileges.
    if let Some(dir) = run.private_tmp.as_deref().map(std::path::Path::new)
        && keyward_runs::sandbox::is_private_tmp(dir)
    {
        if owned_by(dir, keyward_sys::effective_uid()) {
            keyward_runs::sandbox::remove_private_tmp(dir);
        } else {
            tracing::info!(
                run = run.id,
                dir = %dir.display(),
                "the run's private directory belongs to another user; left for its keyward run to remove"
            );
        }
    }
}

/// Whether `path` (not followed if a link) belongs to `uid`.
pub(crate) fn owned_by(path: &std::path::Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == uid)
}

/// Removes runs whose process exited, revoking their tokens.
pub(crate) fn reap(state: &AppState) {
    match state.runs.reap() {
        Ok(ended) => {
            for run in ended {
                release(state, &run);
                tracing::info!(
                    run = run.id,
                    "run ended: its process exited; its token is revoked"
                );
                state.evidence.record(
                    Kind::Run,
                    Some(run.id.clone()),
                    json!({"event": "run_ended", "why": "process exited"}),
                );
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
}

/// Reaps as soon as `pid`, run `run_id`'s process, exits, woken by a
/// pidfd; without pidfd the periodic check in the lifecycle loop does it.
/// The watcher is kept with the run (replacing one for an earlier pid), so
/// removing the run closes the pidfd even while the process lives.
pub(crate) fn watch_exit(state: &Arc<AppState>, run_id: &str, pid: u32) {
    let fd = match keyward_sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(pid, "no pidfd ({e}); run liveness falls back to polling");
            return;
        }
    };
    let weak = Arc::downgrade(state);
    let task = tokio::spawn(async move {
        if let Err(e) = keyward_sys::pidfd_exited(fd).await {
            tracing::debug!(
                pid,
                "pidfd wait failed ({e}); liveness falls back to polling"
            );
            return;
        }
        if let Some(state) = weak.upgrade() {
            reap(&state);
        }
    });
    state.exit_watchers.keep(run_id, task.abort_handle());
    // A removal (or a new pid) that raced this call has already ended the
    // run's watcher: this one must not outlive it.
    if state.runs.get(run_id).is_none_or(|r| r.pid != Some(pid)) {
        state.exit_watchers.end(run_id);
    }
}
