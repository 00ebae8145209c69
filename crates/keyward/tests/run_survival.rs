//! A run's authority and membership survive what a hostile child can do to
//! the daemon and to its own `keyward run`: the daemon killed (through a
//! resource limit, as a child can) and started again after the config was
//! edited, a forged run record, the wrapper killed with SIGKILL while a
//! double-forked leftover lives, and a wrapper starved of descriptors.
//! Real daemon, real child processes, a real HTTPS upstream.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::upstream::{SECRET, Upstream, point_grant_elsewhere, setup, use_passphrase_vault};
use common::{TestHome, json, wait_for};

/// `GET /v1/secrets` on the admin socket from a shell command line.
fn secrets_request(home: &TestHome) -> String {
    format!(
        "curl -sS --unix-socket {} http://k/v1/secrets",
        home.socket().display()
    )
}

fn run_ids(home: &TestHome) -> Vec<String> {
    let (status, body) = home.http("GET", "/v1/runs", None);
    assert_eq!(status, 200, "{body}");
    json(&body)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Starts `keyward run --grant local -- sh -c SCRIPT` in the background.
fn spawn_run(home: &TestHome, extra: &[&str], script: &str) -> Child {
    let mut args = vec!["run", "--grant", "local"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    home.cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The attack chain of a live, unsandboxed run: add a host it controls to
/// its grant in `keyward.toml`, make the daemon die (the red team lowered
/// its CPU limit, which is not a signal; here the test kills it), and wait
/// for the daemon to be started again. The restored run keeps the authority it was created
/// with: the upstream never sees the secret. With a passphrase vault the
/// restored run gets nothing at all until the vault is unsealed, then what
/// it had.
#[test]
fn a_daemon_restart_never_widens_a_live_run() {
    for passphrase in [false, true] {
        let (home, upstream) = setup("");
        if passphrase {
            use_passphrase_vault(&home);
            assert_eq!(home.run_stdin(&["vault", "unseal"], "pw\n").code, 0);
        }
        let (config, _) = point_grant_elsewhere(&home);
        let dir = home.path.parent().unwrap();
        let (edited, restarted, pended, unsealed) = (
            dir.join("edited"),
            dir.join("restarted"),
            dir.join("pended"),
            dir.join("unsealed"),
        );
        let daemon = home.pid_in_file().unwrap();
        let script = format!(
            "sed -i 's/nowhere.invalid/localhost/' {config}; : > {edited}; \
             while [ ! -e {restarted} ]; do sleep 0.05; done; \
             curl -sS -o /dev/null -w '%{{http_code}}\\n' {pending}; : > {pended}; \
             while [ ! -e {unsealed} ]; do sleep 0.05; done; \
             curl -sS -o /dev/null -w '%{{http_code}}\\n' {widened}",
            config = config.display(),
            edited = edited.display(),
            restarted = restarted.display(),
            pended = pended.display(),
            unsealed = unsealed.display(),
            pending = upstream.url("/pending"),
            widened = upstream.url("/widened"),
        );
        let child = spawn_run(&home, &[], &script);
        assert!(wait_for(Duration::from_secs(30), || edited.exists()));
        common::signal(daemon, "KILL");
        assert!(wait_for(Duration::from_secs(10), || !common::alive(daemon)));
        home.start(&[]);
        std::fs::write(&restarted, "").unwrap();
        assert!(wait_for(Duration::from_secs(30), || pended.exists()));
        if passphrase {
            // Sealed: the restored run's record cannot be checked yet, so
            // its request was refused before anything went upstream.
            assert!(home.log().contains("restored runs get nothing"));
            let unseal = home.run_stdin(&["vault", "unseal"], "pw\n");
            assert_eq!(unseal.code, 0, "{unseal:?}");
        }
        std::fs::write(&unsealed, "").unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        let codes: Vec<&str> = stdout.lines().collect();
        upstream.settle();
        let got = upstream.received();
        assert!(
            !got.iter().any(|r| r.to_string().contains(SECRET)),
            "passphrase={passphrase}: the restored run was widened: {got:?}"
        );
        if passphrase {
            // Refused at the CONNECT (curl reports no HTTP status).
            assert_ne!(codes.first(), Some(&"200"), "{stdout}");
            assert!(got.iter().all(|r| r["path"] != "/pending"), "{got:?}");
        } else {
            assert_eq!(codes.first(), Some(&"200"), "{stdout}");
        }
        // The run itself survived the restart: its last request went out
        // (without the secret).
        assert_eq!(codes.last(), Some(&"200"), "{stdout}");
        assert!(got.iter().any(|r| r["path"] == "/widened"), "{got:?}");
        assert!(home.files_containing(SECRET).is_empty());
    }
}

/// A same-user process edits the run registry while the daemon is down,
/// giving a live run a host it controls: the record no longer matches its
/// seal, so the restarted daemon ends the run (its processes too, found by
/// cgroup), says so in its log and the evidence, and sends nothing.
#[test]
fn a_forged_run_record_ends_its_run() {
    let (home, upstream) = setup("");
    point_grant_elsewhere(&home);
    let dir = home.path.parent().unwrap();
    let (ready, go, leftover) = (dir.join("ready"), dir.join("go"), dir.join("leftover.pid"));
    let script = format!(
        "setsid -f sh -c 'echo $$ > {leftover}; while :; do sleep 0.1; done'; \
         while [ ! -s {leftover} ]; do sleep 0.05; done; : > {ready}; \
         while [ ! -e {go} ]; do sleep 0.05; done; curl -sS {url}",
        leftover = leftover.display(),
        ready = ready.display(),
        go = go.display(),
        url = upstream.url("/forged"),
    );
    let mut child = spawn_run(&home, &[], &script);
    assert!(wait_for(Duration::from_secs(30), || ready.exists()));
    let run_id = run_ids(&home).pop().unwrap();
    let daemon = home.pid_in_file().unwrap();
    common::signal(daemon, "KILL");
    assert!(wait_for(Duration::from_secs(10), || !common::alive(daemon)));
    let mut forged = 0;
    for name in ["runs.json", "runs.json.journal"] {
        let path = home.file(name);
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("nowhere.invalid")
        {
            std::fs::write(&path, text.replace("nowhere.invalid", "localhost")).unwrap();
            forged += 1;
        }
    }
    assert!(forged > 0, "the run's frozen grant is in the registry");
    home.start(&[]);
    assert!(!run_ids(&home).contains(&run_id), "the forged run lives on");
    let leftover_pid = read_pid(&leftover);
    assert!(
        wait_for(Duration::from_secs(5), || !common::alive(leftover_pid)),
        "the forged run's leftover lives on"
    );
    std::fs::write(&go, "").unwrap();
    let _ = child.wait();
    let log = home.log();
    assert!(log.contains("fails the integrity check"), "{log}");
    let evidence = home.run(&["audit", "tail", "--json", "-n", "50"]);
    assert!(
        evidence.stdout.contains("record not trusted"),
        "{evidence:?}"
    );
    upstream.settle();
    assert!(
        !upstream
            .received()
            .iter()
            .any(|r| r.to_string().contains(SECRET))
    );
}

/// `keyward run` killed with SIGKILL (the OOM killer, a crash) while a
/// double-forked leftover keeps asking for secrets and using the proxy:
/// the daemon sees the wrapper go and ends the run at once: token revoked,
/// the leftover killed (it is in the run's cgroup, not just its ancestry),
/// the run's private /tmp (bound over /tmp in its mount view, named in its
/// mountinfo) removed. The leftover never gets a secret.
#[test]
fn killing_the_wrapper_ends_the_run_and_everything_it_left() {
    let (home, upstream) = setup("");
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let (leftover, tmp, attempts) = (
        dir.join("leftover.pid"),
        dir.join("tmpdir"),
        dir.join("attempts"),
    );
    let leftover_loop = format!(
        "echo $$ > {leftover}; while :; do {req} >> {attempts} 2>&1; echo >> {attempts}; \
         curl -sS -o /dev/null -w 'proxy=%{{http_code}}\\n' {url} >> {attempts} 2>&1; sleep 0.05; done",
        leftover = leftover.display(),
        req = secrets_request(&home),
        attempts = attempts.display(),
        url = upstream.url("/leftover"),
    );
    let script = format!(
        "awk '$5 == \"/tmp\" {{print $4}}' /proc/self/mountinfo > {tmp}; \
         setsid -f sh -c \"( sh -c '{}' & )\"; sleep 1000",
        leftover_loop.replace('\'', "'\\''"),
        tmp = tmp.display(),
    );
    let mut wrapper = spawn_run(
        &home,
        &[
            "--sandbox=best-effort",
            "--sandbox-allow-write",
            dir.to_str().unwrap(),
        ],
        &script,
    );
    assert!(wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&attempts).is_ok_and(|a| a.contains("proxy="))
    }));
    assert_eq!(run_ids(&home).len(), 1);
    let private_tmp = std::fs::read_to_string(&tmp).unwrap().trim().to_owned();
    assert!(
        private_tmp.contains("keyward-run-") && Path::new(&private_tmp).is_dir(),
        "{private_tmp}"
    );
    let leftover_pid = read_pid(&leftover);
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || !common::alive(leftover_pid)),
        "the leftover outlived its run"
    );
    assert!(wait_for(Duration::from_secs(5), || run_ids(&home).is_empty()));
    assert!(
        wait_for(Duration::from_secs(5), || !Path::new(&private_tmp).exists()),
        "{private_tmp} left behind"
    );
    let seen = std::fs::read_to_string(&attempts).unwrap();
    assert!(!seen.contains("\"secrets\""), "it listed secrets: {seen}");
}

/// A wrapper whose open-file limit drops to 0 (set from outside: a run's
/// own program can no longer change it, see below) while a process the
/// program left ignores SIGTERM: the wrapper can no longer read /proc to
/// end it, but a SIGTERM still ends the wrapper at once, and the daemon
/// then ends the run and the leftover.
#[test]
fn a_wrapper_without_descriptors_stays_killable_and_its_run_ends() {
    let (home, _upstream): (TestHome, Upstream) = setup("");
    let files = tempfile::tempdir().unwrap();
    let (leftover, program, go) = (
        files.path().join("leftover.pid"),
        files.path().join("program.pid"),
        files.path().join("go"),
    );
    let script = format!(
        "setsid -f sh -c 'echo $$ > {leftover}; trap \"\" TERM; while :; do sleep 0.1; done'; \
         while [ ! -s {leftover} ]; do sleep 0.05; done; echo $$ > {program}; \
         while [ ! -e {go} ]; do sleep 0.05; done; exit 0",
        leftover = leftover.display(),
        program = program.display(),
        go = go.display(),
    );
    let mut wrapper = spawn_run(&home, &[], &script);
    assert!(wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&program).is_ok_and(|p| p.ends_with('\n'))
    }));
    let (leftover_pid, program_pid) = (read_pid(&leftover), read_pid(&program));
    let starve = std::process::Command::new("prlimit")
        .args(["--pid", &wrapper.id().to_string(), "--nofile=0:0"])
        .status()
        .unwrap();
    assert!(starve.success());
    std::fs::write(&go, "").unwrap();
    // Once the program has exited, the wrapper is ending what it left, and
    // stuck at it: it cannot see the leftover, nor exit on its own while
    // the leftover lives.
    // Reaped, not just exited: the wrapper has left its wait for it.
    assert!(wait_for(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{program_pid}")).exists()
    }));
    assert!(wrapper.try_wait().unwrap().is_none());
    common::signal(wrapper.id(), "TERM");
    let status = wrapper.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        wait_for(Duration::from_secs(5), || !common::alive(leftover_pid)),
        "the leftover outlived its run"
    );
    assert!(wait_for(Duration::from_secs(5), || run_ids(&home).is_empty()));
}

/// `clone3` with `CLONE_INTO_CGROUP` would let a process be born outside
/// its run's cgroup (Landlock does not see it), and a CPU limit of 0 on
/// `keyward run` or the daemon kills it with SIGXCPU (no signal scope stops
/// that): every run, unsandboxed too, gets `clone3` answered ENOSYS (libc
/// falls back to `clone`) and cannot change another process's limits or
/// priority, while its own stay its to change.
#[test]
fn a_run_cannot_be_born_elsewhere_or_limit_the_wrapper_and_daemon() {
    let (home, _upstream) = setup("");
    let files = tempfile::tempdir().unwrap();
    let report = files.path().join("report");
    let daemon = home.pid_in_file().unwrap();
    let script = format!(
        "python3 -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
         print(\"clone3\", libc.syscall(435, 0, 0), ctypes.get_errno())' > {report}; \
         prlimit --pid $PPID --cpu=0:1 2>/dev/null && echo wrapper-limited >> {report}; \
         prlimit --pid {daemon} --cpu=0:1 2>/dev/null && echo daemon-limited >> {report}; \
         renice -n 19 -p {daemon} >/dev/null 2>&1 && echo daemon-reniced >> {report}; \
         ulimit -n 512 && echo own-limit >> {report}; \
         nice -n 5 true && echo own-nice >> {report}; \
         python3 -c 'import os; pid = os.fork(); os._exit(0) if pid == 0 else print(\"fork\", os.waitpid(pid, 0)[1])' >> {report}",
        report = report.display(),
    );
    let run = common::upstream::run_sh(&home, &[], &script);
    assert_eq!(run.code, 0, "{run:?}");
    let got = std::fs::read_to_string(&report).unwrap();
    assert!(got.contains("clone3 -1 38"), "clone3 is not ENOSYS: {got}");
    for refused in ["wrapper-limited", "daemon-limited", "daemon-reniced"] {
        assert!(!got.contains(refused), "{refused}: {got}");
    }
    for allowed in ["own-limit", "own-nice", "fork 0"] {
        assert!(got.contains(allowed), "{allowed}: {got}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{daemon}/limits")).unwrap();
    let cpu = limits
        .lines()
        .find(|l| l.starts_with("Max cpu time"))
        .unwrap();
    assert!(cpu.contains("unlimited"), "{cpu}");
}

/// The cgroup2 mount point.
fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(std::path::PathBuf::from)
        .expect("a cgroup2 mount (.ci/run mounts one when missing)")
}

/// An unsandboxed program tries the two cgroup moves a same-user process
/// could make: itself out of its run's cgroup (to outlive a killed
/// wrapper unconfined), and a process outside the run into it (to have the
/// daemon kill it with the run). Both writes are refused (every run is
/// kept out of the cgroup file systems), and when the run ends the
/// outside process lives on.
#[test]
fn a_run_cannot_move_processes_in_or_out_of_its_cgroup() {
    let (home, _upstream) = setup("");
    let files = tempfile::tempdir().unwrap();
    let report = files.path().join("report");
    let mut victim = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let mount = cgroup2_mount();
    let script = format!(
        "own=$(sed -n 's/^0:://p' /proc/self/cgroup); \
         echo \"cgroup=$own\" > {report}; \
         (echo $$ > {mount}/cgroup.procs) 2>/dev/null && echo escaped >> {report}; \
         (echo {victim} > {mount}$own/cgroup.procs) 2>/dev/null && echo captured >> {report}; \
         mkdir {mount}$own/nested 2>/dev/null && echo nested >> {report}; \
         echo \"after=$(sed -n 's/^0:://p' /proc/self/cgroup)\" >> {report}",
        report = report.display(),
        mount = mount.display(),
        victim = victim.id(),
    );
    let run = common::upstream::run_sh(&home, &[], &script);
    assert_eq!(run.code, 0, "{run:?}");
    let got = std::fs::read_to_string(&report).unwrap();
    let own = got
        .lines()
        .find_map(|l| l.strip_prefix("cgroup="))
        .unwrap()
        .to_owned();
    assert!(own.contains("/keyward-") && own.contains("/run_"), "{got}");
    assert!(!got.contains("escaped"), "{got}");
    assert!(!got.contains("captured"), "{got}");
    assert!(!got.contains("nested"), "{got}");
    assert!(got.contains(&format!("after={own}")), "{got}");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "a process outside the run was ended with it"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}
