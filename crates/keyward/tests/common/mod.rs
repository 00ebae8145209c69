//! Test harness: a temporary keyward home, the real binary, raw HTTP over
//! the admin socket. Every daemon a test starts is killed when its home
//! drops, so a failing test leaves no process behind.
#![allow(dead_code)] // each test binary uses a different subset

pub mod upstream;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// Writes `input` to a piped child's stdin and closes it. A child may refuse
/// its arguments and exit before reading anything (`secret set "Bad Name"`):
/// the pipe is then broken, which is the child's answer, not a test failure;
/// the caller judges the child by its exit status and output.
pub fn feed_stdin(child: &mut std::process::Child, input: &[u8]) {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    match stdin.write_all(input) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing the child's stdin: {e}"),
    }
}

pub struct TestHome {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestHome {
    pub fn new() -> Self {
        // Under /tmp, not the target dir: socket paths must stay short.
        Self::in_dir(Path::new("/tmp"))
    }

    /// A home in a fresh directory under `parent`.
    pub fn in_dir(parent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kwt")
            .tempdir_in(parent)
            .unwrap();
        let path = dir.path().join("home");
        Self { _dir: dir, path }
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("keyward.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path.join("keyward.pid")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("daemon.log")).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The binary with this home and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("KEYWARD_HOME", &self.path)
            .env_remove("KEYWARD_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    /// Starts the binary with `input` on stdin (then closed) and its
    /// output captured.
    pub fn spawn_stdin(&self, args: &[&str], input: &str) -> std::process::Child {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        feed_stdin(&mut child, input.as_bytes());
        child
    }

    /// Runs with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        Run::from(self.spawn_stdin(args, input).wait_with_output().unwrap())
    }

    /// Every file under the home whose bytes contain `needle`.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, needle, out);
                } else if std::fs::read(&path)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, needle.as_bytes(), &mut out);
        out
    }

    /// `daemon start --detach`, asserting success; returns the pid.
    pub fn start(&self, extra: &[&str]) -> u32 {
        let mut args = vec!["daemon", "start", "--detach", "--json"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        assert_eq!(run.code, 0, "start failed: {run:?}\nlog:\n{}", self.log());
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        v["pid"].as_u64().unwrap() as u32
    }

    /// A copy of the binary that another user can execute: the build tree
    /// may sit in a private directory (a CI clone in a 0700 temp dir).
    pub fn binary_for_other_users(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("keyward");
        std::fs::copy(BIN, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    }

    pub fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Raw HTTP/1.1 request on the admin socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_on(&self.socket(), method, path, body)
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        if let Some(pid) = self.pid_in_file()
            && alive(pid)
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_for(Duration::from_secs(5), || !alive(pid));
        }
        remove_run_cgroups(&self.path);
    }
}

/// Removes the (empty) run cgroups a killed test daemon left, which the
/// daemon removes itself only when it stops gracefully: the daemon names
/// them `keyward-<first 6 bytes of SHA-256 of the home, hex>` under its
/// own cgroup (the root of the cgroup2 mount, for tests run as root).
fn remove_run_cgroups(home: &Path) {
    use sha2::Digest as _;
    let tag = hex::encode(&sha2::Sha256::digest(home.as_os_str().as_encoded_bytes())[..6]);
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in mounts.lines().filter(|l| l.contains(" - cgroup2 ")) {
        let Some(point) = line.split_whitespace().nth(4) else {
            continue;
        };
        let base = Path::new(point).join(format!("keyward-{tag}"));
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(entry.path());
            }
            let _ = std::fs::remove_dir(&base);
        }
    }
}

pub fn http_on(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_http_on(socket, method, path, body).expect("an HTTP answer from the daemon")
}

/// Like [`http_on`], but `None` when the daemon is gone or hangs up.
pub fn try_http_on(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    http_exchange(socket, method, path, &[], body).map(|(status, _, body)| (status, body))
}

/// One request with extra header lines (`name: value`) on the admin
/// socket: status, the response's head and its body.
pub fn http_exchange(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: keyward\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).ok()?;
    let status = resp.get(9..12)?.parse().ok()?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Some((status, head.to_owned(), body.to_owned()))
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Set in the run of a test that [`on_small_tmpfs`] starts: the mount point.
const TMPFS_VAR: &str = "KEYWARD_TEST_TMPFS";

/// For tests of a full disk: a real filesystem that really fills up, so
/// writes fail with the kernel's own `ENOSPC`. The calling test (`test`,
/// its name) is run again, alone, in a private mount namespace
/// (`unshare --mount`, plus `--map-root-user` when not root) with a tmpfs
/// of `size` mounted at a fresh directory; that run gets `Some(mount
/// point)`. The outer run asserts that the inner one ran and passed, then
/// gets `None` and returns. Where no tmpfs can be mounted (no root and no
/// user namespaces), the test is skipped with the reason, like the
/// hardening tests that need root.
pub fn on_small_tmpfs(test: &str, size: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(TMPFS_VAR) {
        return Some(dir.into());
    }
    let mount_point = tempfile::Builder::new()
        .prefix("kwfull")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg("--mount");
    if keyward_sys::effective_uid() != 0 {
        cmd.arg("--map-root-user");
    }
    let out = cmd
        .args([
            "sh",
            "-c",
            r#"mount -t tmpfs -o "size=$1,mode=0700" keyward-test "$2" && shift 2 && exec "$@""#,
            "sh",
            size,
        ])
        .arg(mount_point.path())
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(TMPFS_VAR, mount_point.path())
        .output()
        .expect("unshare (util-linux) runs");
    let run = Run::from(out);
    if !run.stdout.contains("running 1 test") {
        eprintln!(
            "SKIPPED {test}: cannot mount a {size} tmpfs here (exit {}): {}",
            run.code,
            run.stderr.trim()
        );
        return None;
    }
    assert!(
        run.code == 0 && run.stdout.contains("1 passed"),
        "the run on a {size} tmpfs failed (exit {}):\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    None
}

/// Whether pid is a live process (not every thread of it has exited).
pub fn alive(pid: u32) -> bool {
    keyward_sys::process_exists(pid)
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Polls a condition until it holds or a timeout passes (the test kit's).
pub use keyward_testkit::wait_for;

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const WITHOUT_NETWORK_VAR: &str = "KEYWARD_TEST_WITHOUT_NETWORK";

/// For tests that name metadata or link-local addresses: the calling test
/// (`test`, its name) is run again, alone, in a private network namespace
/// with only loopback up (`unshare -n`, plus a user namespace when not
/// root), so a proxy that wrongly connects cannot send a packet off the
/// machine. Returns true in the outer run (which asserts the inner one
/// passed): the caller then returns.
pub fn rerun_without_network(test: &str) -> bool {
    if std::env::var_os(WITHOUT_NETWORK_VAR).is_some() {
        return false;
    }
    let flags = if keyward_sys::effective_uid() == 0 {
        "-n"
    } else {
        "-rn"
    };
    let run = Run::from(
        Command::new("unshare")
            .args([flags, "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(WITHOUT_NETWORK_VAR, "1")
            .output()
            .expect("unshare (util-linux) runs"),
    );
    assert!(
        run.code == 0 && run.stdout.contains("1 passed"),
        "{test} failed inside its network namespace (exit {}):\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    true
}
