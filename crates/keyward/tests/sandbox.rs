//! `keyward run --sandbox` against what Landlock cannot see: each attack
//! is performed by the sandboxed program itself, through the real binary,
//! and refused by the seccomp syscall filter (MPTCP and other protocols,
//! io_uring, other processes' scheduling and limits, ptrace, namespaces,
//! keystroke injection); what a program normally does still works; a
//! vault whose files were widened is refused by the daemon, naming the
//! file, and nothing is lost; strict `--sandbox` fails, naming what is
//! missing, where the filter cannot be installed.

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
    let (home, upstream) = setup("");
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
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
    let (home, _upstream) = setup("");
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// chmod stays allowed in a sandboxed run (pip, npm, cargo and `chmod +x`
/// set modes by path, which seccomp cannot tell apart): a program that
/// widens the home, `vault/` and the key file is answered by the daemon,
/// which refuses every use of the vault (set, list, resolve for a run, and
/// unsealing after a restart), naming each file in turn, until they are
/// restored; then everything is there. chown and setuid bits are refused
/// in the sandbox.
#[test]
fn a_widened_vault_is_refused_naming_the_file_and_nothing_is_lost() {
    if !sandbox_available() {
        return;
    }
    let (home, upstream) = setup("");
    let work = home.path.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
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
    let run = Run::from(
        home.cmd(&["run", "--sandbox", "--", "sh", "-c", &script])
            .current_dir(&work)
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("WIDENED"), "{run:?}");
    assert!(run.stdout.contains("CHOWN-REFUSED"), "{run:?}");
    assert!(run.stdout.contains("SETUID-REFUSED"), "{run:?}");
    assert_eq!(mode(&work.join("own")) & 0o6000, 0);
    assert_eq!(
        (mode(&home.path), mode(&vault), mode(&key)),
        (0o755, 0o755, 0o644)
    );

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
