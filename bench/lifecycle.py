#!/usr/bin/env python3
"""Daemon lifecycle figures, each beside a baseline measured in the same run.

  cold start to ready   foreground `keyward daemon start` until READY=1 on
                        $NOTIFY_SOCKET (the daemon is listening and answers),
                        and `keyward daemon start --detach` until it returns;
                        baseline: `keyward version` (process start-up alone)
  status round trip     `keyward status`; baselines: `keyward version` and
                        `curl --unix-socket .../v1/health` (a peer client)
  idle RSS              VmRSS of a daemon that has served the status runs

Targets (issue 2): ready <= 30 ms, status <= 5 ms, idle RSS <= 15 MB.
Usage: bench/lifecycle.py path/to/keyward [starts] [status_runs]
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1]
STARTS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
STATUS_RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 50


def env_for(home):
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "NOTIFY_SOCKET")}
    env["KEYWARD_HOME"] = home
    return env


def timed(cmd, env):
    t = time.perf_counter_ns()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter_ns() - t) / 1e6


def median_ms(samples):
    return statistics.median(samples)


def foreground_ready(home):
    """ms from spawn to READY=1, then a clean SIGTERM stop."""
    notify_path = os.path.join(os.path.dirname(home), "notify.sock")
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(10)
    env = env_for(home)
    env["NOTIFY_SOCKET"] = notify_path
    t = time.perf_counter_ns()
    proc = subprocess.Popen([BIN, "daemon", "start"], env=env, stderr=subprocess.DEVNULL)
    while True:
        msg = sock.recv(256).decode()
        if "READY=1" in msg.splitlines():
            break
    ready = (time.perf_counter_ns() - t) / 1e6
    proc.terminate()
    proc.wait(10)
    sock.close()
    return ready


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    root = tempfile.mkdtemp(prefix="kwb", dir="/tmp")
    home = os.path.join(root, "home")
    env = env_for(home)
    try:
        version = [timed([BIN, "version"], env) for _ in range(STARTS)]
        fg = [foreground_ready(home) for _ in range(STARTS)]
        detach = []
        for _ in range(STARTS):
            detach.append(timed([BIN, "daemon", "start", "--detach"], env))
            subprocess.run([BIN, "daemon", "stop"], env=env, check=True, stdout=subprocess.DEVNULL)

        subprocess.run([BIN, "daemon", "start", "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
        sock_path = os.path.join(home, "keyward.sock")
        status, version2, curl = [], [], []
        for _ in range(STATUS_RUNS):
            status.append(timed([BIN, "status"], env))
            version2.append(timed([BIN, "version"], env))
            if shutil.which("curl"):
                curl.append(timed(["curl", "-sf", "--unix-socket", sock_path, "http://keyward/v1/health"], env))
        with open(os.path.join(home, "keyward.pid")) as f:
            pid = int(f.read().strip())
        time.sleep(0.5)
        rss = rss_kb(pid)
        subprocess.run([BIN, "daemon", "stop"], env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run([BIN, "daemon", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)

    base = median_ms(version)
    print(f"keyward lifecycle bench ({BIN}); medians, ms")
    print(f"{'measure':38} {'median':>9} {'ratio':>8}  target")
    print(f"{'baseline: keyward version (n=%d)' % STARTS:38} {base:9.2f} {1:8.2f}")
    print(f"{'start to READY=1, foreground (n=%d)' % STARTS:38} {median_ms(fg):9.2f} {median_ms(fg) / base:8.2f}  <= 30 ms")
    print(f"{'daemon start --detach (n=%d)' % STARTS:38} {median_ms(detach):9.2f} {median_ms(detach) / base:8.2f}")
    vb = median_ms(version2)
    print(f"{'baseline: keyward version (n=%d)' % STATUS_RUNS:38} {vb:9.2f} {1:8.2f}")
    print(f"{'keyward status (n=%d)' % STATUS_RUNS:38} {median_ms(status):9.2f} {median_ms(status) / vb:8.2f}  <= 5 ms")
    if curl:
        print(f"{'peer: curl --unix-socket health (n=%d)' % STATUS_RUNS:38} {median_ms(curl):9.2f} {median_ms(curl) / vb:8.2f}")
    print(f"{'idle daemon RSS (MB)':38} {rss / 1024:9.2f} {'':>8}  <= 15 MB")


if __name__ == "__main__":
    main()
