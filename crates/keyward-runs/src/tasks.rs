//! Background tasks that belong to one run (its fd broker, the watcher of
//! its process's exit), kept by run id so that ending the run ends them:
//! a task left behind would hold its descriptors (a broker's socket, a
//! pidfd) for as long as the process it waits on lives.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::task::AbortHandle;

/// One kind of task per run, by run id.
#[derive(Default)]
pub struct RunTasks {
    running: Mutex<HashMap<String, AbortHandle>>,
}

impl RunTasks {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `task` as `run_id`'s, ending the one it replaces.
    pub fn keep(&self, run_id: &str, task: AbortHandle) {
        if let Some(old) = self.running().insert(run_id.to_owned(), task) {
            old.abort();
        }
    }

    /// Ends `run_id`'s task, if it has one.
    pub fn end(&self, run_id: &str) {
        if let Some(task) = self.running().remove(run_id) {
            task.abort();
        }
    }

    /// How many runs have a task kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replacing or ending a run's task aborts it; another run's task is
    /// left alone.
    #[tokio::test]
    async fn replaced_and_ended_tasks_are_aborted() {
        let tasks = RunTasks::default();
        let first = tokio::spawn(std::future::pending::<()>());
        let second = tokio::spawn(std::future::pending::<()>());
        let other = tokio::spawn(std::future::pending::<()>());
        tasks.keep("run_a", first.abort_handle());
        tasks.keep("run_b", other.abort_handle());
        tasks.keep("run_a", second.abort_handle());
        assert!(first.await.unwrap_err().is_cancelled());
        tasks.end("run_a");
        assert!(second.await.unwrap_err().is_cancelled());
        assert_eq!(tasks.len(), 1);
        assert!(!other.is_finished());
        tasks.end("run_b");
        assert!(other.await.unwrap_err().is_cancelled());
        tasks.end("run_b");
    }
}
