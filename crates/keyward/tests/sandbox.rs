//! `keyward run --sandbox` against what Landlock cannot see: each attack
//! is performed by the sandboxed program itself, through the real binary,
//! and refused by the seccomp syscall filter (MPTCP and other protocols,
//! io_uring, other processes' scheduling and limits, ptrace, namespaces,
//! keystroke injection); what a program normally does still works; a
//! vault whose files were widened is refused by the daemon, naming the
//! file, and nothing is lost; strict `--sandbox` fails, naming what is
//! missing, where the filter cannot be installed. The private network
//! namespace: only the proxy (bridged in) and `--allow-port` ports lead out
//! (no UDP, no DNS but the proxy's, no other host port or address); the
//! base-URL endpoints and the fd broker still work; `--sandbox=no-netns`
//! keeps the host's network; an unprivileged user gets a user namespace,
//! or a refusal naming the sysctls.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::upstream::{SECRET, setup};
use common::{BIN, Run, TestHome, rerun_without_network};

/// The sandbox needs Landlock ABI 6 (files, TCP, signals).
fn sandbox_available() -> bool {
    if keyward_sys::landlock_abi() < 6 {
        eprintln!("Landlock ABI 6 not available; skipped");
        return false;
    }
    true
}

/// A home with a `local` grant (see `setup`) and a working directory
/// beside it.
fn home_with_work() -> (TestHome, common::upstream::Upstream, PathBuf) {
    let (home, upstream) = setup("");
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    (home, upstream, work)
}

/// Raw syscalls from python, each printed as `name: ERRNO` (or `ALLOWED`).
const ATTACKS: &str = r#"
import ctypes, errno, fcntl, os, socket, sys, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def say(name, e):
    print(f"{name}: {errno.errorcode.get(e, e) if e else 'ALLOWED'}", flush=True)
def sc(name, nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    say(name, ctypes.get_errno() if r < 0 else 0)
def sock(name, *args):
    try:
        return socket.socket(*args), say(name, 0)
    except OSError as e:
        say(name, e.errno)
daemon, wrapper, sibling, port = map(int, sys.argv[1:5])
s = sock("mptcp", socket.AF_INET, socket.SOCK_STREAM, 262)
if s:
    try:
        s[0].connect(("127.0.0.1", port)); print("MPTCP-CONNECTED")
    except OSError as e:
        print("mptcp connect:", e)
sock("sctp", socket.AF_INET, socket.SOCK_STREAM, 132)
sock("sctp seqpacket", socket.AF_INET6, socket.SOCK_SEQPACKET, 0)
sock("raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sock("packet", 17, socket.SOCK_RAW, 0)
sock("smc", 43, socket.SOCK_STREAM, 0)
sock("netlink audit", socket.AF_NETLINK, socket.SOCK_RAW, 9)
sock("netlink uevent", socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
sock("netlink sock_diag", socket.AF_NETLINK, socket.SOCK_RAW, 4)
sc("io_uring_setup", 425, 4, ctypes.create_string_buffer(256))
for pid, who in [(daemon, "daemon"), (wrapper, "wrapper")]:
    mask = ctypes.c_ulong(1)
    sc(f"sched_setaffinity {who}", 203, pid, ctypes.sizeof(mask), ctypes.byref(mask))
    sc(f"ioprio_set {who}", 251, 1, pid, 3 << 13)
    lim = (ctypes.c_ulonglong * 2)(1, 1)
    sc(f"prlimit {who}", 302, pid, 7, ctypes.byref(lim), 0)
    sc(f"setpriority {who}", 141, 0, pid, 19)
    sc(f"sched_setscheduler {who}", 144, pid, 5, ctypes.byref(ctypes.c_int(0)))
sc("setpriority user", 141, 2, 0, 19)
sc("ioprio_set user", 251, 3, 0, 3 << 13)
sc("ptrace sibling", 101, 16, sibling, 0, 0)
sc("process_vm_readv sibling", 310, sibling, 0, 0, 0, 0, 0)
sc("personality", 135, 0x0040000)
sc("bpf", 321, 0, 0, 0)
sc("userfaultfd", 323, 0)
sc("keyctl", 250, 0, -3, 0)
sc("x32 socket", 0x40000000 + 41, 2, 1, 0)
sc("clone newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
if os.isatty(0):
    try:
        fcntl.ioctl(0, termios.TIOCSTI, b"x"); say("tiocsti", 0)
    except OSError as e:
        say("tiocsti", e.errno)
else:
    print("tiocsti: NO-TTY")
# What a program does every day, still allowed.
lim = (ctypes.c_ulonglong * 2)()
sc("prlimit read daemon", 302, daemon, 7, 0, ctypes.byref(lim))
sc("setpriority self", 141, 0, 0, 1)
open("written-by-python", "w").write("ok")
sock("tcp", socket.AF_INET, socket.SOCK_STREAM)
sock("udp", socket.AF_INET, socket.SOCK_DGRAM)
sock("unix", socket.AF_UNIX, socket.SOCK_STREAM)
sock("netlink route", socket.AF_NETLINK, socket.SOCK_RAW, 0)
"#;

/// Runs the binary with `args` and a pseudo-terminal (opened by the test)
/// as its standard input.
fn run_on_pty(home: &TestHome, work: &Path, args: &[&str]) -> Run {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, subprocess, sys\n\
             m, s = os.openpty()\n\
             sys.exit(subprocess.run(sys.argv[1:], stdin=s).returncode)",
            BIN,
        ])
        .args(args)
        .env("KEYWARD_HOME", &home.path)
        .env_remove("KEYWARD_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(work)
        .output()
        .unwrap();
    Run::from(output)
}

/// What `/proc/<pid>` says of a process's limits, CPUs, nice value and I/O
/// priority.
fn scheduling_of(pid: u32) -> (String, String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cpus = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list"))
        .unwrap()
        .to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from the state (3rd) on: nice is the 19th field.
    let nice = after_comm.split(' ').nth(16).unwrap().to_owned();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let ionice = Command::new("ionice")
        .args(["-p", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (cpus, nice, limits, ionice)
}

/// Every attack Landlock does not see, refused with EPERM (clone3-free
/// paths included), the daemon's limits, CPUs, nice value and I/O class
/// unchanged, nothing connected to a host-loopback port over MPTCP; and
/// curl through the proxy, git, python writing files and `keyward eval`
/// still work in the same sandboxed run.
#[test]
fn a_sandboxed_program_is_refused_what_landlock_cannot_see() {
    if !sandbox_available() {
        return;
    }
    let (home, upstream, work) = home_with_work();
    std::fs::write(work.join("attacks.py"), ATTACKS).unwrap();
    // `keyward eval` from inside: the build tree is not executable there.
    std::fs::copy(BIN, work.join("kw")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let daemon = home.pid_in_file().unwrap();
    let before = scheduling_of(daemon);
    let script = format!(
        r#"sleep 30 & sibling=$!
python3 attacks.py {daemon} $PPID $sibling {port}
kill $sibling
unshare -U -n true 2>&1 && echo UNSHARE-ESCAPED
unshare -n true 2>&1 && echo NETNS-ESCAPED
git init -q repo && cd repo && echo x > f && git add f \
  && git -c user.email=a@b -c user.name=a commit -q -m first && echo GIT-COMMITTED && cd ..
curl -sS {url} >/dev/null && echo CURL-OK
./kw eval --action read_file --target src/lib.rs
"#,
        url = upstream.url("/sandboxed-filter"),
    );
    let run = run_on_pty(
        &home,
        &work,
        &[
            "run",
            "--sandbox",
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("seccomp syscall filter"),
        "the run says it is filtered: {run:?}"
    );
    for refused in [
        "mptcp",
        "sctp",
        "sctp seqpacket",
        "raw",
        "packet",
        "smc",
        "netlink audit",
        "netlink uevent",
        "netlink sock_diag",
        "io_uring_setup",
        "sched_setaffinity daemon",
        "ioprio_set daemon",
        "prlimit daemon",
        "setpriority daemon",
        "sched_setscheduler daemon",
        "sched_setaffinity wrapper",
        "ioprio_set wrapper",
        "prlimit wrapper",
        "setpriority wrapper",
        "sched_setscheduler wrapper",
        "setpriority user",
        "ioprio_set user",
        "ptrace sibling",
        "process_vm_readv sibling",
        "personality",
        "bpf",
        "userfaultfd",
        "keyctl",
        "x32 socket",
        "clone newuser",
        "tiocsti",
    ] {
        assert!(
            run.stdout.contains(&format!("\n{refused}: EPERM\n"))
                || run.stdout.starts_with(&format!("{refused}: EPERM\n")),
            "{refused} is refused with EPERM: {run:?}"
        );
    }
    for allowed in [
        "prlimit read daemon",
        "setpriority self",
        "tcp",
        "udp",
        "unix",
        "netlink route",
    ] {
        assert!(
            run.stdout.contains(&format!("\n{allowed}: ALLOWED\n")),
            "{allowed} still works: {run:?}"
        );
    }
    for escape in ["MPTCP-CONNECTED", "UNSHARE-ESCAPED", "NETNS-ESCAPED"] {
        assert!(!run.stdout.contains(escape), "{escape}: {run:?}");
    }
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing connected to the host-loopback port"
    );
    assert_eq!(scheduling_of(daemon), before, "the daemon is as it was");
    // Ordinary work.
    assert!(run.stdout.contains("GIT-COMMITTED"), "{run:?}");
    assert!(run.stdout.contains("CURL-OK"), "{run:?}");
    assert!(
        run.stdout.contains("allow: read_file src/lib.rs"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("written-by-python")).unwrap(),
        "ok"
    );
    upstream.settle();
    let got = upstream.received();
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
}

/// In a private network namespace (only loopback), an MPTCP socket aimed
/// at a metadata address is refused at creation: nothing is sent, and the
/// refusal is the filter's (EPERM), not the missing route (ENETUNREACH).
#[test]
fn mptcp_to_a_metadata_address_is_refused_in_a_private_network() {
    if !sandbox_available()
        || rerun_without_network("mptcp_to_a_metadata_address_is_refused_in_a_private_network")
    {
        return;
    }
    let (home, _upstream, work) = home_with_work();
    let script = r#"
import socket
for family, host in [(socket.AF_INET, "169.254.169.254"), (socket.AF_INET6, "fd00:ec2::254")]:
    try:
        s = socket.socket(family, socket.SOCK_STREAM, 262)
    except OSError as e:
        print("socket:", e.errno); continue
    try:
        s.connect((host, 80)); print("METADATA-CONNECTED")
    except OSError as e:
        print("connect:", e.errno)
"#;
    let run = Run::from(
        home.cmd(&["run", "--sandbox", "--", "python3", "-c", script])
            .current_dir(&work)
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "socket: 1\nsocket: 1\n", "{run:?}");
}

/// What the mount-view test's program tries, each printed as
/// `name: RESULT`.
const VIEW_ATTACKS: &str = r#"
import errno, os, socket, sys
def say(name, e):
    print(f"{name}: {errno.errorcode.get(e, e) if e else 'OK'}", flush=True)
# First, before this script opens anything: the caller's descriptor of the
# keyward home (its number and inode in the environment) is not here.
try:
    st = os.fstat(int(os.environ["KW_INHERITED_FD"]))
    say("inherited fd", 0 if str(st.st_ino) == os.environ["KW_INHERITED_INO"] else errno.EBADF)
except OSError as e:
    say("inherited fd", e.errno)
home, tmp_file, shm_file = sys.argv[1:4]
for arg in sys.argv[4:]:
    name, path = arg.split("=", 1)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path); print(f"{name}: CONNECTED", flush=True)
    except OSError as e:
        say(name, e.errno)
for name, path in [("host tmp file", tmp_file), ("host shm file", shm_file)]:
    try:
        open(path).read(); say(name, 0)
    except OSError as e:
        say(name, e.errno)
print("home holds:", ",".join(sorted(os.listdir(home))), flush=True)
for name, path in [("chmod home", home), ("chmod vault", home + "/vault"),
                   ("chmod key", home + "/vault/identity.txt"),
                   ("chmod ca", home + "/ca/public"), ("chmod socket", home + "/keyward.sock")]:
    try:
        os.chmod(path, 0o777); say(name, 0)
    except OSError as e:
        say(name, e.errno)
# The working directory's parent is the view's, not the host's.
home_name = os.path.basename(home)
print("parent holds:", ",".join(sorted(os.listdir(".."))), flush=True)
for name, path in [("chmod parent home", "../" + home_name),
                   ("chmod parent key", "../" + home_name + "/vault/identity.txt")]:
    try:
        os.chmod(path, 0o777); say(name, 0)
    except OSError as e:
        say(name, e.errno)
# No capability, even as root; no device node; no descriptor of the caller's.
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Cap"))
print("caps:", ",".join(f"{k}={v.strip()}" for k, v in sorted(status.items())), flush=True)
try:
    os.mknod("null-copy", 0o20600, os.makedev(1, 3)); say("mknod", 0)
except OSError as e:
    say("mknod", e.errno)
try:
    socket.sethostname("kw-sandboxed"); say("sethostname", 0)
except OSError as e:
    say("sethostname", e.errno)
os.mkdir("/dev/shm/locked"); open("/dev/shm/locked/f", "w").write("x"); os.chmod("/dev/shm/locked", 0)
# System V IPC: none of the host's segments.
print("sysv shm segments:", len(open("/proc/sysvipc/shm").read().splitlines()) - 1, flush=True)
open("/tmp/written-in-view", "w").write("mine")
open("/dev/shm/shm-in-view", "w").write("mine")
say("write tmp and shm", 0)
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] == "/tmp":
        print("private tmp:", fields[3], flush=True)
"#;

/// A listening Unix socket at `path` (its directory made when missing;
/// removed again on drop when made here).
struct PlantedSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    made_dir: Option<PathBuf>,
}

impl PlantedSocket {
    fn at(path: PathBuf) -> Option<Self> {
        let dir = path.parent().unwrap().to_owned();
        let made_dir = if dir.exists() {
            None
        } else {
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        };
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).ok()?;
        listener.set_nonblocking(true).unwrap();
        Some(Self {
            listener,
            path,
            made_dir,
        })
    }

    fn nobody_connected(&self) -> bool {
        matches!(self.listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock)
    }
}

impl Drop for PlantedSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.made_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The mount view: other programs' named sockets (in the host's /tmp, in
/// `/run/user/<uid>`, under `/run` and in the user's home) cannot be
/// reached, the host's /tmp and /dev/shm files are absent, the keyward
/// home shows only the public certificates and the admin socket, and
/// nothing in it can be chmod-ed (read-only), not even through the working
/// directory's `..`; the program has no capability (even as root), makes
/// no device node, changes no host name and holds no descriptor its caller
/// left open; /tmp and /dev/shm are the run's own, and gone when it ends
/// (a directory it made unreadable included).
#[test]
fn the_mount_view_hides_what_the_run_must_not_reach() {
    if !sandbox_available() {
        return;
    }
    if keyward_sys::probe_mount_view().is_err() {
        eprintln!("no mount namespace here; skipped");
        return;
    }
    let (home, _upstream, work) = home_with_work();
    std::fs::write(work.join("view.py"), VIEW_ATTACKS).unwrap();
    let tag = format!("kw-view-{}", std::process::id());
    let uid = keyward_sys::effective_uid();
    let user_home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let planted: Vec<(&str, PlantedSocket)> = [
        (
            "tmp socket",
            std::env::temp_dir().join(format!("{tag}.sock")),
        ),
        (
            "run/user socket",
            PathBuf::from(format!("/run/user/{uid}/{tag}.sock")),
        ),
        ("run socket", PathBuf::from(format!("/run/{tag}/s.sock"))),
        ("home socket", user_home.join(format!(".{tag}/agent.sock"))),
        // In a directory the run may write: an ssh control socket there is
        // a logged-in session.
        (
            "cache socket",
            user_home.join(format!(".cache/{tag}/ctl.sock")),
        ),
    ]
    .into_iter()
    .filter_map(|(name, path)| PlantedSocket::at(path).map(|s| (name, s)))
    .collect();
    assert!(
        planted.iter().any(|(n, _)| *n == "tmp socket"),
        "a socket in /tmp can always be planted"
    );
    let tmp_file = std::env::temp_dir().join(format!("{tag}.txt"));
    std::fs::write(&tmp_file, "host").unwrap();
    let shm_file = PathBuf::from(format!("/dev/shm/{tag}"));
    std::fs::write(&shm_file, "host").unwrap();
    let vault = home.file("vault");
    let modes = || {
        [
            home.path.clone(),
            vault.clone(),
            vault.join("identity.txt"),
            home.file("ca/public"),
        ]
        .map(|p| mode(&p))
    };
    let before = modes();
    // A System V shared memory segment of the host's.
    let segment = Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .last()
                .map(str::to_owned)
        });
    let mut args = vec![
        "run".to_owned(),
        "--sandbox".to_owned(),
        "--".to_owned(),
        "python3".to_owned(),
        "view.py".to_owned(),
        home.path.display().to_string(),
        tmp_file.display().to_string(),
        shm_file.display().to_string(),
    ];
    args.extend(
        planted
            .iter()
            .map(|(name, s)| format!("{name}={}", s.path.display())),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Started with a descriptor of the keyward home open and inheritable,
    // as a careless caller might.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import os, sys\n\
         fd = os.open(sys.argv[1], os.O_RDONLY); os.set_inheritable(fd, True)\n\
         os.environ['KW_INHERITED_FD'] = str(fd)\n\
         os.environ['KW_INHERITED_INO'] = str(os.fstat(fd).st_ino)\n\
         os.execv(sys.argv[2], sys.argv[2:])",
    ])
    .arg(&home.path)
    .arg(BIN)
    .args(&args)
    .env("KEYWARD_HOME", &home.path)
    .env_remove("KEYWARD_CONFIG")
    .env_remove("RUST_LOG")
    .current_dir(&work);
    let run = Run::from(cmd.output().unwrap());
    let _ = std::fs::remove_file(&tmp_file);
    let _ = std::fs::remove_file(&shm_file);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("private mount view"), "{run:?}");
    for (name, socket) in &planted {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} tried: {run:?}"));
        assert!(
            line.ends_with("ENOENT") || line.ends_with("ECONNREFUSED"),
            "{line}: {run:?}"
        );
        assert!(socket.nobody_connected(), "{name}: {run:?}");
    }
    for absent in ["host tmp file: ENOENT", "host shm file: ENOENT"] {
        assert!(run.stdout.contains(absent), "{absent}: {run:?}");
    }
    assert!(
        run.stdout.contains("home holds: ca,keyward.sock\n"),
        "{run:?}"
    );
    for name in ["home", "vault", "key", "ca", "socket"] {
        let line = format!("chmod {name}: ");
        let refused = run
            .stdout
            .lines()
            .find(|l| l.starts_with(&line))
            .is_some_and(|l| l.ends_with("EROFS") || l.ends_with("ENOENT"));
        assert!(refused, "{line}: {run:?}");
    }
    assert_eq!(modes(), before, "no mode changed");
    assert!(run.stdout.contains("parent holds: home,work\n"), "{run:?}");
    for line in ["chmod parent home: EROFS", "chmod parent key: ENOENT"] {
        assert!(run.stdout.contains(line), "{line}: {run:?}");
    }
    let caps = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("caps: "))
        .unwrap_or_else(|| panic!("{run:?}"));
    for set in ["CapBnd", "CapEff", "CapInh", "CapPrm", "CapAmb"] {
        assert!(
            caps.contains(&format!("{set}=0000000000000000")),
            "{set}: {caps}"
        );
    }
    // Landlock refuses the node before the missing CAP_MKNOD would.
    assert!(
        run.stdout.contains("mknod: EACCES") || run.stdout.contains("mknod: EPERM"),
        "{run:?}"
    );
    for line in ["sethostname: EPERM", "inherited fd: EBADF"] {
        assert!(run.stdout.contains(line), "{line}: {run:?}");
    }
    assert!(run.stdout.contains("write tmp and shm: OK"), "{run:?}");
    if let Some(id) = &segment {
        let _ = Command::new("ipcrm").args(["-m", id]).status();
        assert!(run.stdout.contains("sysv shm segments: 0\n"), "{run:?}");
    }
    assert!(
        !std::env::temp_dir().join("written-in-view").exists(),
        "the run's /tmp is not the host's"
    );
    let private = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("private tmp: "))
        .unwrap_or_else(|| panic!("{run:?}"));
    let private = Path::new(private).parent().unwrap();
    assert!(
        private
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("keyward-run-"),
        "{private:?}"
    );
    assert!(!private.exists(), "removed when the run ended: {private:?}");
}

/// Plays the user's terminal: a pseudo-terminal (33 rows, 77 columns) as
/// the binary's controlling terminal and its standard input (`/dev/null`
/// with `KW_STDIN_NULL` set), output and error; Ctrl-C typed once the
/// program says READY; prints the exit code, what the terminal showed and
/// whether its settings are as they were, as JSON.
const USER_TERMINAL: &str = r#"
import fcntl, json, os, select, struct, subprocess, sys, termios
m, s = os.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
before = termios.tcgetattr(s)
def controlling_terminal():
    os.setsid(); fcntl.ioctl(1, termios.TIOCSCTTY, 0)
stdin = subprocess.DEVNULL if os.environ.get("KW_STDIN_NULL") else s
p = subprocess.Popen(sys.argv[1:], stdin=stdin, stdout=s, stderr=s, preexec_fn=controlling_terminal)
out, typed = b"", False
while True:
    ready, _, _ = select.select([m], [], [], 0.1)
    if ready:
        try:
            out += os.read(m, 4096)
        except OSError:
            break
        if b"READY" in out and not typed:
            os.write(m, b"\x03"); typed = True
    elif p.poll() is not None:
        break
p.wait()
print(json.dumps({"code": p.returncode, "shown": out.decode(errors="replace"),
                  "unchanged": termios.tcgetattr(s) == before}))
"#;

/// `keyward run --sandbox EXTRA -- sh -c PROGRAM` on the user's terminal
/// played by `USER_TERMINAL` (standard input `/dev/null` when
/// `stdin_null`): what it reports.
fn on_user_terminal(
    home: &TestHome,
    work: &Path,
    extra: &[&str],
    program: &str,
    stdin_null: bool,
) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", USER_TERMINAL, BIN, "run", "--sandbox"])
        .args(extra)
        .args(["--", "sh", "-c", program])
        .env("KEYWARD_HOME", &home.path)
        .env_remove("KEYWARD_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(work);
    if stdin_null {
        cmd.env("KW_STDIN_NULL", "1");
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    common::json(&String::from_utf8_lossy(&output.stdout))
}

/// A sandboxed run on a terminal gets a pseudo-terminal of its own: the
/// program sees the user's window size, Ctrl-C reaches it as the terminal's
/// SIGINT, and the settings it changes (no echo, no line editing) stay on
/// its own terminal: the user's is as it was. With `--no-pty` the same
/// program changes the user's terminal (what the default prevents).
/// `--pty` without any terminal is refused, saying why.
#[test]
fn a_private_terminal_keeps_the_users_terminal_as_it_was() {
    if !sandbox_available() {
        return;
    }
    let (home, _upstream, work) = home_with_work();
    let program = "stty size; stty -echo -icanon; \
                   trap 'echo GOT-INT; exit 7' INT; echo READY; while :; do sleep 1; done";
    let on_terminal = |extra: &[&str]| on_user_terminal(&home, &work, extra, program, false);
    let private = on_terminal(&[]);
    assert_eq!(private["code"], 7, "{private}");
    let shown = private["shown"].as_str().unwrap();
    assert!(shown.contains("33 77"), "{private}");
    assert!(shown.contains("GOT-INT"), "{private}");
    assert_eq!(private["unchanged"], true, "{private}");

    let shared = on_terminal(&["--no-pty"]);
    assert_eq!(
        shared["unchanged"], false,
        "without a private terminal the program changes the user's: {shared}"
    );

    let refused = Run::from(
        home.cmd(&["run", "--pty", "--", "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap(),
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("--pty needs a terminal on standard input, output or error"),
        "{refused:?}"
    );
}

/// With standard input redirected and the user's terminal on standard
/// output, the program still gets a terminal of its own (its `/dev/tty`),
/// so `stty < /dev/tty` leaves the user's as it was; output written after
/// the program closed its terminal descriptors and opened `/dev/tty` again
/// is shown.
#[test]
fn a_private_terminal_serves_redirected_input_and_a_reopened_tty() {
    if !sandbox_available() {
        return;
    }
    let (home, _upstream, work) = home_with_work();
    let program = "stty -echo -icanon < /dev/tty && echo TTY-CHANGED; \
                   exec </dev/null >/dev/null 2>/dev/null; echo AFTER-REOPEN > /dev/tty";
    let result = on_user_terminal(&home, &work, &[], program, true);
    assert_eq!(result["code"], 0, "{result}");
    let shown = result["shown"].as_str().unwrap();
    assert!(shown.contains("TTY-CHANGED"), "{result}");
    assert!(shown.contains("AFTER-REOPEN"), "{result}");
    assert_eq!(result["unchanged"], true, "{result}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A sandboxed program cannot widen the home, `vault/` or the key file:
/// in its mount view they are an empty read-only file system (chmod stays
/// allowed elsewhere: pip, npm, cargo and `chmod +x` set modes by path).
/// chown and setuid bits are refused in the sandbox. A program outside the
/// sandbox (an unsandboxed run) can widen them; the daemon answers by
/// refusing every use of the vault (set, list, resolve for a run, and
/// unsealing after a restart), naming each file in turn, until they are
/// restored; then everything is there.
#[test]
fn a_widened_vault_is_refused_naming_the_file_and_nothing_is_lost() {
    if !sandbox_available() {
        return;
    }
    let (home, upstream, work) = home_with_work();
    let vault = home.file("vault");
    let key = vault.join("identity.txt");
    let snapshots = || std::fs::read_dir(&vault).unwrap().count();
    let files_before = snapshots();
    let script = format!(
        "chmod 755 {home} && chmod 755 {vault} && chmod 644 {key} && echo WIDENED\n\
         touch own && chown \"$(id -u):$(id -g)\" own 2>&1 || echo CHOWN-REFUSED\n\
         chmod u+s own 2>&1 || echo SETUID-REFUSED\n",
        home = home.path.display(),
        vault = vault.display(),
        key = key.display(),
    );
    let modes = || (mode(&home.path), mode(&vault), mode(&key));
    let private = modes();
    let run = Run::from(
        home.cmd(&["run", "--sandbox", "--", "sh", "-c", &script])
            .current_dir(&work)
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("WIDENED"), "{run:?}");
    assert!(run.stderr.contains("Read-only file system"), "{run:?}");
    assert!(run.stdout.contains("CHOWN-REFUSED"), "{run:?}");
    assert!(run.stdout.contains("SETUID-REFUSED"), "{run:?}");
    assert_eq!(mode(&work.join("own")) & 0o6000, 0);
    assert_eq!(modes(), private, "the sandboxed program changed no mode");

    // Outside the sandbox, a program can.
    let run = Run::from(
        home.cmd(&["run", "--", "sh", "-c", &script])
            .current_dir(&work)
            .output()
            .unwrap(),
    );
    assert!(run.stdout.contains("WIDENED"), "{run:?}");
    assert_eq!(modes(), (0o755, 0o755, 0o644));

    // Each widened file is named in turn, with its mode and the fix.
    for (path, widened, fix) in [
        (home.path.clone(), 0o755, 0o700),
        (vault.clone(), 0o755, 0o700),
        (key.clone(), 0o644, 0o600),
    ] {
        let set = home.run_stdin(&["secret", "set", "another"], "value-2");
        assert_ne!(set.code, 0, "{set:?}");
        for needle in [
            "VAULT REFUSED".to_owned(),
            path.display().to_string(),
            format!("mode {widened:o}"),
            format!("chmod {fix:o} {}", path.display()),
        ] {
            assert!(set.stderr.contains(&needle), "{needle}: {set:?}");
        }
        let list = home.run(&["secret", "list"]);
        assert_ne!(list.code, 0, "{list:?}");
        assert!(list.stderr.contains("VAULT REFUSED"), "{list:?}");
        let proxied = Run::from(
            home.cmd(&[
                "run",
                "--grant",
                "local",
                "--",
                "curl",
                "-sS",
                &upstream.url("/while-exposed"),
            ])
            .output()
            .unwrap(),
        );
        assert!(
            !proxied.stdout.contains(SECRET),
            "no secret while exposed: {proxied:?}"
        );
        chmod(&path, fix);
    }
    upstream.settle();
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r["headers"]["authorization"] != format!("Bearer {SECRET}")),
        "the secret was not injected while the vault was exposed"
    );
    assert_eq!(snapshots(), files_before, "nothing was written meanwhile");

    // Restored: the secret is there and injected.
    let list = home.run(&["secret", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains("local-token"), "{list:?}");
    let proxied = Run::from(
        home.cmd(&[
            "run",
            "--grant",
            "local",
            "--",
            "curl",
            "-sS",
            &upstream.url("/restored"),
        ])
        .output()
        .unwrap(),
    );
    assert_eq!(proxied.code, 0, "{proxied:?}");
    upstream.settle();
    assert!(
        upstream.received().iter().any(|r| r["path"] == "/restored"
            && r["headers"]["authorization"] == format!("Bearer {SECRET}")),
        "{proxied:?}"
    );

    // A key widened while the daemon was down: it starts, but the vault
    // stays closed, naming the key file, until it is restored.
    let stop = home.run(&["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    chmod(&key, 0o640);
    home.start(&[]);
    assert!(
        home.log().contains("VAULT REFUSED") && home.log().contains(&key.display().to_string()),
        "{}",
        home.log()
    );
    let list = home.run(&["secret", "list"]);
    assert_ne!(list.code, 0, "{list:?}");
    assert!(list.stderr.contains(&key.display().to_string()), "{list:?}");
    chmod(&key, 0o600);
    let unseal = home.run(&["vault", "unseal"]);
    assert_eq!(unseal.code, 0, "{unseal:?}");
    let list = home.run(&["secret", "list"]);
    assert!(list.stdout.contains("local-token"), "{list:?}");
}

/// Strict `--sandbox` fails, naming the missing filter, when seccomp cannot
/// be used (the `seccomp` syscall made to fail with ENOSYS by strace, as on
/// a kernel without CONFIG_SECCOMP_FILTER); best-effort runs and says so.
#[test]
fn strict_sandbox_fails_naming_the_missing_syscall_filter() {
    if !sandbox_available() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("strace not installed; skipped");
        return;
    }
    let home = TestHome::new();
    home.start(&[]);
    let work: PathBuf = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let without_seccomp = |mode: &str| {
        Run::from(
            Command::new("strace")
                .args([
                    "-f",
                    "-o",
                    "/dev/null",
                    "-e",
                    "trace=seccomp",
                    "-e",
                    "inject=seccomp:error=ENOSYS",
                    BIN,
                    "run",
                    mode,
                    "--",
                    "sh",
                    "-c",
                    "echo RAN",
                ])
                .env("KEYWARD_HOME", &home.path)
                .env_remove("KEYWARD_CONFIG")
                .current_dir(&work)
                .output()
                .unwrap(),
        )
    };
    let strict = without_seccomp("--sandbox");
    assert_eq!(strict.code, 1, "{strict:?}");
    assert!(!strict.stdout.contains("RAN"), "{strict:?}");
    for needle in [
        "--sandbox cannot be enforced",
        "the syscall filter cannot be installed",
        "CONFIG_SECCOMP_FILTER",
        "--sandbox=best-effort",
    ] {
        assert!(strict.stderr.contains(needle), "{needle}: {strict:?}");
    }
    let best = without_seccomp("--sandbox=best-effort");
    assert_eq!(best.code, 0, "{best:?}");
    assert!(best.stdout.contains("RAN"), "{best:?}");
    assert!(
        best.stderr
            .contains("NOT enforced: the syscall filter cannot be installed"),
        "{best:?}"
    );
}

/// A UDP service on the host's loopback that answers every datagram with
/// the same bytes (a DNS query gets its own bytes back, which a resolver
/// reads as an answer) and counts what it got.
struct UdpEcho {
    port: u16,
    got: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl UdpEcho {
    fn start() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        Self { port, got }
    }

    fn received(&self) -> usize {
        self.got.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP service that greets each connection with `hello <port>` and
/// counts them.
struct Greeter {
    port: u16,
    got: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Greeter {
    fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(mut stream) = stream {
                    use std::io::Write;
                    let _ = stream.write_all(format!("hello {port}\n").as_bytes());
                }
            }
        });
        Self { port, got }
    }

    fn connections(&self) -> usize {
        self.got.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What the sandboxed program tries on the network, one line each:
/// `name: OK <what it got>` or `name: ERRNO`.
const NETWORK_PROBES: &str = r#"
import errno, socket, struct, sys
def say(name, what):
    print(f"{name}: {what}", flush=True)
def tcp(name, host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        say(name, "OK " + s.makefile().readline().strip())
    except OSError as e:
        say(name, errno.errorcode.get(e.errno, str(e)))
udp_port, proxy_port, allowed, other = map(int, sys.argv[1:5])
query = struct.pack(">HHHHHH", 0x4b57, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
for name, payload in [("udp", b"ping"), ("dns", query)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(payload, ("127.0.0.1", udp_port))
        say(name, "OK " + repr(s.recv(2048)[:4]))
    except OSError as e:
        say(name, errno.errorcode.get(e.errno, "TIMEOUT" if isinstance(e, socket.timeout) else str(e)))
try:
    say("resolver", "OK " + socket.gethostbyname("keyward-netns-test.invalid"))
except OSError as e:
    say("resolver", "FAILED")
tcp("allowed port", "127.0.0.1", allowed)
tcp("other port", "127.0.0.1", other)
tcp("proxy port on 127.0.0.2", "127.0.0.2", proxy_port)
tcp("proxy port on 192.0.2.1", "192.0.2.1", proxy_port)
tcp("allowed port on ::1", "::1", allowed)
"#;

/// Gives the test's own network namespace 192.0.2.1 (a documentation
/// address), on a dummy interface where the kernel has the driver, else on
/// `lo`: the host's "non-loopback address".
fn add_non_loopback_address() {
    let ok = Command::new("sh")
        .args([
            "-c",
            "{ ip link add kwdummy type dummy && ip link set kwdummy up \
               && ip addr add 192.0.2.1/32 dev kwdummy; } 2>/dev/null \
             || ip addr add 192.0.2.1/32 dev lo",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cannot give the test's namespace a non-loopback address"
    );
}

/// `--sandbox` puts the program in a private network namespace where the
/// proxy, bridged in, is the only way out: a host-loopback UDP service
/// receives nothing (a DNS query to it gets no answer), a name the host's
/// resolver would look up fails, TCP to another host-loopback port, and
/// to the proxy's port number on another loopback address, the host's
/// non-loopback address or `::1`, fails and reaches nothing; the one port
/// given with `--allow-port` is forwarded; curl through the proxy (which
/// resolves `localhost` itself) gets the credential injected; and the run
/// record names the namespace and the forwarded port. Run in a private
/// network namespace of its own, so nothing can leave the machine.
#[test]
fn the_private_network_lets_out_only_the_proxy() {
    if !sandbox_available() || rerun_without_network("the_private_network_lets_out_only_the_proxy")
    {
        return;
    }
    add_non_loopback_address();
    let (home, upstream) = setup("");
    let proxy_port = common::upstream::proxy_port(&home);
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("probes.py"), NETWORK_PROBES).unwrap();
    let udp = UdpEcho::start();
    let allowed = Greeter::start("127.0.0.1:0");
    let other = Greeter::start("127.0.0.1:0");
    let allowed6 = Greeter::start(&format!("[::1]:{}", allowed.port));
    let same_port = [
        Greeter::start(&format!("127.0.0.2:{proxy_port}")),
        Greeter::start(&format!("192.0.2.1:{proxy_port}")),
        // The proxy's port number on the host's ::1 is not the proxy: a
        // program reaching [::1]:<proxy port> inside gets the proxy.
        Greeter::start(&format!("[::1]:{proxy_port}")),
    ];
    // The services answer from outside the sandbox.
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    host.send_to(b"ping", ("127.0.0.1", udp.port)).unwrap();
    assert_eq!(
        host.recv(&mut [0u8; 8]).unwrap(),
        4,
        "the UDP service answers"
    );
    let script = format!(
        "python3 probes.py {udp} {proxy_port} {allowed} {other}\n\
         curl -sS {url} >/dev/null && echo CURL-OK\n\
         curl -sS --proxy \"$(echo \"$HTTPS_PROXY\" | sed 's/127.0.0.1/[::1]/')\" {url6} >/dev/null && echo CURL6-OK\n\
         ip -o link | grep -vc ' lo:' | sed 's/^/other links: /'\n\
         touch ready; while [ ! -e go ]; do sleep 0.05; done\n",
        udp = udp.port,
        allowed = allowed.port,
        other = other.port,
        url = upstream.url("/through-the-bridge"),
        url6 = upstream.url("/through-the-bridge-on-v6"),
    );
    let child = home
        .cmd(&[
            "run",
            "--sandbox",
            "--allow-port",
            &allowed.port.to_string(),
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(common::wait_for(std::time::Duration::from_secs(60), || {
        work.join("ready").exists()
    }));
    let (status, runs) = home.http("GET", "/v1/runs", None);
    assert_eq!(status, 200, "{runs}");
    std::fs::write(work.join("go"), "").unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "private network namespace (net".to_owned(),
        format!("127.0.0.1:{proxy_port} bridged to the proxy"),
        format!("host loopback port {} forwarded", allowed.port),
    ] {
        assert!(run.stderr.contains(&needle), "{needle}: {run:?}");
        assert!(runs.contains(&needle), "the run record: {needle}: {runs}");
    }
    let line = |name: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} line: {run:?}"))
            .to_owned()
    };
    // Nothing listens on that port inside: the datagrams go nowhere.
    assert_eq!(line("udp"), "TIMEOUT", "{run:?}");
    assert_eq!(line("dns"), "TIMEOUT", "{run:?}");
    assert_eq!(line("resolver"), "FAILED", "{run:?}");
    assert_eq!(line("allowed port"), format!("OK hello {}", allowed.port));
    // Refused by Landlock's port rule before any route is looked at.
    assert_eq!(line("other port"), "EACCES", "{run:?}");
    // The proxy's port number elsewhere: nothing listens there inside.
    assert_eq!(line("proxy port on 127.0.0.2"), "ECONNREFUSED", "{run:?}");
    assert_eq!(line("proxy port on 192.0.2.1"), "ENETUNREACH", "{run:?}");
    assert_eq!(
        line("allowed port on ::1"),
        format!("OK hello {}", allowed.port)
    );
    assert!(run.stdout.contains("CURL6-OK"), "{run:?}");
    assert_eq!(allowed6.connections(), 1);
    assert_eq!(line("other links"), "0", "only loopback: {run:?}");
    assert!(run.stdout.contains("CURL-OK"), "{run:?}");
    assert_eq!(udp.received(), 1, "only the test's own datagram arrived");
    assert_eq!(other.connections(), 0);
    assert_eq!(allowed.connections(), 1);
    for greeter in &same_port {
        assert_eq!(greeter.connections(), 0, "{}", greeter.port);
    }
    upstream.settle();
    let got = upstream.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for (request, path) in got
        .iter()
        .zip(["/through-the-bridge", "/through-the-bridge-on-v6"])
    {
        assert_eq!(request["path"], path);
        assert_eq!(
            request["headers"]["authorization"],
            format!("Bearer {SECRET}")
        );
    }
}

/// Inside the private network namespace, the other ways in still work:
/// base-URL endpoints (plain HTTP to `127.0.0.1:<proxy port>/r/...`,
/// bridged) and the fd broker (an inherited socketpair), each with the
/// credential injected.
#[test]
fn base_url_endpoints_and_the_fd_broker_work_inside_the_namespace() {
    if !sandbox_available() {
        return;
    }
    let (home, upstream) = setup("");
    let config = home.file("keyward.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("base_url_env = \"LOCAL_BASE_URL\"\n");
    std::fs::write(&config, text).unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let base = Run::from(
        home.cmd(&[
            "run",
            "--sandbox",
            "--base-url",
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            "curl -sS \"$LOCAL_BASE_URL/via-base-url\" >/dev/null && echo BASE-OK",
        ])
        .current_dir(&work)
        .output()
        .unwrap(),
    );
    assert_eq!(base.code, 0, "{base:?}");
    assert!(base.stdout.contains("BASE-OK"), "{base:?}");
    assert!(
        base.stderr.contains("private network namespace"),
        "{base:?}"
    );
    let broker_client = format!(
        r#"
import os, socket
broker = socket.socket(fileno=int(os.environ["KEYWARD_BROKER_FD"]))
broker.send(b"\x01")
msg, fds, flags, addr = socket.recv_fds(broker, 2, 1)
s = socket.socket(fileno=fds[0])
s.sendall(b"GET /via-broker HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split(b"\r\n")[0].decode())
"#,
        port = upstream.port
    );
    let brokered = Run::from(
        home.cmd(&[
            "run",
            "--sandbox",
            "--broker",
            "fd",
            "--grant",
            "local",
            "--",
            "python3",
            "-c",
            &broker_client,
        ])
        .current_dir(&work)
        .output()
        .unwrap(),
    );
    assert_eq!(brokered.code, 0, "{brokered:?}");
    assert!(brokered.stdout.starts_with("HTTP/1.1 200"), "{brokered:?}");
    assert!(
        brokered.stderr.contains("private network namespace"),
        "{brokered:?}"
    );
    upstream.settle();
    let got = upstream.received();
    for path in ["/via-base-url", "/via-broker"] {
        let request = got
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path} arrived: {got:?}"));
        assert_eq!(
            request["headers"]["authorization"],
            format!("Bearer {SECRET}"),
            "{path}"
        );
    }
}

/// `--sandbox=no-netns` keeps the host's network, as before: Landlock's
/// port rules only, so the proxy's port number on another loopback address
/// is reachable; the run record names no namespace; the rest of the
/// sandbox (files, the filter) stays strict.
#[test]
fn no_netns_keeps_the_host_network() {
    if !sandbox_available() {
        return;
    }
    let (home, upstream) = setup("");
    let proxy_port = common::upstream::proxy_port(&home);
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let elsewhere = Greeter::start(&format!("127.0.0.2:{proxy_port}"));
    let script = format!(
        "python3 -c 'import socket; s = socket.create_connection((\"127.0.0.2\", {proxy_port})); print(s.makefile().readline().strip())'\n\
         curl -sS {url} >/dev/null && echo CURL-OK\n\
         cat {config} >/dev/null 2>&1 || echo CONFIG-REFUSED\n",
        url = upstream.url("/no-netns"),
        config = home.file("keyward.toml").display(),
    );
    let run = Run::from(
        home.cmd(&[
            "run",
            "--sandbox=no-netns",
            "--grant",
            "local",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(&work)
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("hello {proxy_port}")),
        "{run:?}"
    );
    assert!(run.stdout.contains("CURL-OK"), "{run:?}");
    assert!(run.stdout.contains("CONFIG-REFUSED"), "{run:?}");
    assert!(run.stderr.contains("seccomp syscall filter"), "{run:?}");
    assert!(!run.stderr.contains("network namespace"), "{run:?}");
    assert_eq!(elsewhere.connections(), 1);
}

/// As an unprivileged user (uid 65534 through `setpriv`): `--sandbox`
/// makes a user and network namespace that maps the user to itself (its
/// uid unchanged, no capabilities), a setuid-root program gives it no
/// privilege (no_new_privs), and the proxy answers through the bridge. Where the kernel refuses the namespace (`unshare` made to fail
/// with EPERM by strace, as with `user.max_user_namespaces=0`), strict
/// `--sandbox` fails with exit 1 naming the sysctls and the ways on, and
/// `--sandbox=best-effort` runs without the namespace and says so.
#[test]
fn an_unprivileged_run_gets_a_user_namespace_or_a_clear_refusal() {
    if !sandbox_available() {
        return;
    }
    if keyward_sys::effective_uid() != 0 {
        eprintln!("needs root to switch to uid 65534; skipped");
        return;
    }
    let strace = Command::new("strace").arg("-V").output().is_ok();
    let home = TestHome::new();
    let top = home.path.parent().unwrap().to_owned();
    let binary = home.binary_for_other_users();
    let work = top.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&top)
        .status()
        .unwrap();
    assert!(chown.success());
    // A setuid-root program in reach of the sandboxed user: it must not
    // make the program root (no_new_privs; root is not even mapped).
    let suid = work.join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let as_nobody = |prefix: &[&str], args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(prefix)
        .arg(&binary)
        .args(args)
        .env("KEYWARD_HOME", &home.path)
        .env("HOME", &top)
        .env_remove("KEYWARD_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(&work);
        Run::from(cmd.output().unwrap())
    };
    let run = as_nobody(
        &[],
        &[
            "run",
            "--sandbox",
            "--",
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status; cat /proc/self/uid_map; \
             curl -sS -o /dev/null -w 'proxy answered %{http_code}\\n' https://localhost:1/; \
             echo \"setuid program: euid $(./suid-id -u)\"; grep NoNewPrivs /proc/self/status",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("private network namespace (user+net): loopback only"),
        "{run:?}"
    );
    assert!(run.stderr.contains("private mount view"), "{run:?}");
    assert!(run.stdout.starts_with("65534\n"), "{run:?}");
    assert!(run.stdout.contains("CapEff:\t0000000000000000"), "{run:?}");
    let map: Vec<&str> = run
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(map, ["65534", "65534", "1"], "{run:?}");
    assert!(run.stdout.contains("proxy answered 502"), "{run:?}");
    assert!(
        run.stdout.contains("setuid program: euid 65534\n"),
        "a setuid-root program runs without its privilege: {run:?}"
    );
    assert!(run.stdout.contains("NoNewPrivs:\t1"), "{run:?}");
    if !strace {
        eprintln!("strace not installed; the refusal is not tried");
        return;
    }
    let refused = |mode: &str| {
        as_nobody(
            &[
                "strace",
                "-f",
                "-o",
                "/dev/null",
                "-e",
                "trace=unshare",
                "-e",
                "inject=unshare:error=EPERM",
            ],
            &["run", mode, "--", "sh", "-c", "echo RAN"],
        )
    };
    let strict = refused("--sandbox");
    assert_eq!(strict.code, 1, "{strict:?}");
    assert!(!strict.stdout.contains("RAN"), "{strict:?}");
    for needle in [
        "--sandbox cannot be enforced",
        "no private network namespace",
        "no private mount view",
        "kernel.unprivileged_userns_clone",
        "user.max_user_namespaces",
        "--sandbox=best-effort",
        "--sandbox=no-netns",
    ] {
        assert!(strict.stderr.contains(needle), "{needle}: {strict:?}");
    }
    let best = refused("--sandbox=best-effort");
    assert_eq!(best.code, 0, "{best:?}");
    assert!(best.stdout.contains("RAN"), "{best:?}");
    for missing in ["no private mount view", "no private network namespace"] {
        assert!(
            best.stderr.contains("NOT enforced: ") && best.stderr.contains(missing),
            "{missing}: {best:?}"
        );
    }
    let stop = as_nobody(&[], &["daemon", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
}
