//! A cgroup (v2) per run, where the kernel lets the daemon make one: the
//! run's processes are in it whatever they do (double fork, `setsid`,
//! reparenting when `keyward run` dies), the daemon finds a process's run
//! from `/proc/<pid>/cgroup` even after a restart, and ends a run by
//! killing everything in it. Process tracking needs no controller, so a
//! cgroup2 mount beside cgroup v1 controllers is enough. Where no cgroup can
//! be made (no cgroup2 mount, no write access to the daemon's own cgroup),
//! membership falls back to process ancestry and the daemon says so.

use std::path::{Path, PathBuf};

/// The daemon's run cgroups: `<daemon's cgroup>/keyward-<home hash>/<run id>`.
#[derive(Debug)]
pub struct RunCgroups {
    /// The cgroup2 mount point.
    mount: PathBuf,
    /// The base, relative to the mount (`/…/keyward-<hash>`).
    base: String,
    /// The daemon's own cgroup: where processes moved into a run's cgroup
    /// from outside it are put back.
    own: String,
    /// Runs removed whose cgroup [`RunCgroups::end`] has yet to empty: the
    /// sweep leaves them alone, so it cannot kill a run's own `keyward run`
    /// before `end` has moved it back where it came from.
    ending: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RunCgroups {
    /// Finds the cgroup2 mount and makes this home's base under the
    /// daemon's own cgroup; `None` (with why) when that cannot be done.
    pub fn detect(home: &Path) -> Result<Self, String> {
        let mount = cgroup2_mount().ok_or("no cgroup2 file system is mounted")?;
        let own = own_cgroup(std::process::id())
            .ok_or("the daemon's own cgroup (v2) cannot be read from /proc/self/cgroup")?;
        let tag = {
            use sha2::Digest as _;
            hex::encode(&sha2::Sha256::digest(home.as_os_str().as_encoded_bytes())[..6])
        };
        let base = format!("{}/keyward-{tag}", own.trim_end_matches('/'));
        let dir = mount.join(base.trim_start_matches('/'));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
        }
        Ok(Self {
            mount,
            base,
            own,
            ending: std::sync::Mutex::default(),
        })
    }

    fn dir(&self, relative: &str) -> PathBuf {
        self.mount.join(relative.trim_start_matches('/'))
    }

    /// Makes `run_id`'s cgroup and moves `pid` (the run's `keyward run`)
    /// into it, so everything it starts is born inside. Returns the
    /// cgroup (relative to the mount) and the one `pid` came from.
    pub fn adopt(&self, run_id: &str, pid: u32) -> Result<(String, String), String> {
        let relative = format!("{}/{run_id}", self.base);
        let dir = self.dir(&relative);
        // The base too, should it have been removed meanwhile.
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let from = own_cgroup(pid).ok_or_else(|| format!("cannot read pid {pid}'s cgroup"))?;
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("cannot move pid {pid} into {}: {e}", dir.display()));
        }
        Ok((relative, from))
    }

    /// The run id whose cgroup holds `pid` (whether or not that run still
    /// exists); `None` when it is in none of this daemon's run cgroups.
    pub fn run_of(&self, pid: u32) -> Option<String> {
        let cgroup = own_cgroup(pid)?;
        let rest = cgroup.strip_prefix(&self.base)?.strip_prefix('/')?;
        Some(rest.split('/').next().unwrap_or_default().to_owned())
    }

    /// Ends a run's cgroup: moves `spare` (the run's `keyward run`, which
    /// may be the one ending the run) back to `home_cgroup`, kills
    /// everything else inside and removes the cgroup. Returns how many
    /// processes were left.
    /// Says a run is being removed: its cgroup is [`RunCgroups::end`]'s to
    /// empty, not the sweep's. Called before the run leaves the registry.
    pub fn mark_ending(&self, run_id: &str) {
        self.ending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_owned());
    }

    fn is_ending(&self, run_id: &str) -> bool {
        self.ending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(run_id)
    }

    pub fn end(&self, relative: &str, spare: Option<(u32, &str)>, born: Option<u64>) -> usize {
        let ended = self.end_inner(relative, spare, born);
        if let Some(run_id) = relative.rsplit('/').next() {
            self.ending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run_id);
        }
        ended
    }

    fn end_inner(&self, relative: &str, spare: Option<(u32, &str)>, born: Option<u64>) -> usize {
        if !relative.starts_with(&format!("{}/", self.base)) || relative.contains("/../") {
            tracing::error!(cgroup = relative, "not one of this daemon's run cgroups");
            return 0;
        }
        let dir = self.dir(relative);
        if let Some((pid, home_cgroup)) = spare
            && std::fs::write(self.dir(home_cgroup).join("cgroup.procs"), pid.to_string()).is_err()
        {
            // Gone already, or not movable: it is ended with the rest.
            tracing::debug!(pid, "the run's own process stays in its cgroup");
        }
        kill_all(&dir, born, &self.dir(&self.own))
    }

    /// Removes the base when no run cgroup is left in it (the daemon is
    /// stopping; live runs keep theirs for the next start).
    pub fn release(&self) {
        let _ = std::fs::remove_dir(self.dir(&self.base));
    }

    /// Run cgroups under the base whose run is not in `live`: left by runs
    /// removed while the daemon was down, or by a record deleted from
    /// `runs.json`. Their processes are ended.
    pub fn sweep(&self, live: &dyn Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir(&self.base)) else {
            return 0;
        };
        let mut ended = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Live first, then ending: a run is marked ending before it
            // leaves the registry, so one of the two always holds for it.
            if entry.path().is_dir()
                && name.starts_with("run_")
                && !live(&name)
                && !self.is_ending(&name)
            {
                let left = kill_all(&entry.path(), None, &self.dir(&self.own));
                if left > 0 {
                    tracing::warn!(
                        cgroup = %entry.path().display(),
                        processes = left,
                        "ended processes of a run that no longer exists"
                    );
                }
                ended += left;
            }
        }
        ended
    }
}

/// Kills every process in the cgroup `dir` and removes it; returns how many
/// were killed. The cgroup is frozen first, so nothing inside can fork or
/// move processes while it is emptied. A process that was moved in from
/// outside the run (any process of the same user can be written into a
/// cgroup it owns) is not the run's to kill: the daemon itself, and any
/// process that started before the run's own (`born`, clock ticks since
/// boot), are moved back to `refuge` instead.
fn kill_all(dir: &Path, born: Option<u64>, refuge: &Path) -> usize {
    let procs = |dir: &Path| -> Vec<u32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let daemon = std::process::id();
    let freezer = dir.join("cgroup.freeze");
    let mut killed = std::collections::HashSet::new();
    for _ in 0..1000 {
        let _ = std::fs::write(&freezer, "1");
        let left = procs(dir);
        if left.is_empty() && std::fs::remove_dir(dir).is_ok() {
            return killed.len();
        }
        if !dir.exists() {
            return killed.len();
        }
        for pid in left {
            let foreign = pid == daemon
                || born.is_some_and(|born| {
                    crate::process_start(pid).is_some_and(|start| start < born)
                });
            if foreign {
                if std::fs::write(refuge.join("cgroup.procs"), pid.to_string()).is_ok() {
                    tracing::warn!(pid, cgroup = %dir.display(), "a process moved into a run's cgroup from outside it was moved out, not killed");
                }
            } else if killed.insert(pid) || keyward_sys::process_exists(pid) {
                // A frozen process can still be killed.
                let _ = keyward_sys::send_signal(pid, keyward_sys::Signal::Kill);
            }
        }
        let _ = std::fs::write(&freezer, "0");
        // Killed processes leave the cgroup as they exit; wait for that.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    tracing::error!(cgroup = %dir.display(), "processes in a run's cgroup could not be ended");
    killed.len()
}

/// Where cgroup2 is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// A process's cgroup v2 path (`0::/path` in `/proc/<pid>/cgroup`).
fn own_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run being removed is `end`'s to empty, never the sweep's: the
    /// sweep used to kill a run's own `keyward run` in the moment between
    /// the run leaving the registry and `end` moving it back out.
    #[test]
    fn the_sweep_leaves_a_run_being_ended_to_end() {
        let home = tempfile::tempdir().unwrap();
        let Ok(cgroups) = RunCgroups::detect(home.path()) else {
            eprintln!("no writable cgroup2 here: nothing to test");
            return;
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (relative, origin) = cgroups.adopt("run_0123456789ab", child.id()).unwrap();
        cgroups.mark_ending("run_0123456789ab");
        assert_eq!(
            cgroups.sweep(&|_| false),
            0,
            "the sweep took a run being ended"
        );
        assert!(child.try_wait().unwrap().is_none(), "killed by the sweep");
        // `end` spares the run's own process (moved back where it came
        // from) and clears the mark, after which the sweep would see it.
        assert_eq!(cgroups.end(&relative, Some((child.id(), &origin)), None), 0);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the spared process was killed"
        );
        assert!(!cgroups.is_ending("run_0123456789ab"));
        child.kill().unwrap();
        child.wait().unwrap();
        cgroups.release();
    }
}
