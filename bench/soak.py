"""Soak and limits of a real keyward daemon, on loopback only.

  soak MINUTES   1,000 registered runs; 200 concurrent clients, each making
                 requests through the proxy with a random run (a tunnel,
                 then a few requests on it), while the secret rotates, the
                 vault seals and unseals and runs come and go. Reports
                 unexpected errors, peak RSS, the daemon's descriptors at
                 start and end, and `keyward audit verify` afterwards.
  leaf-cache N   N CONNECTs to N distinct host names: each makes the proxy
                 mint a leaf certificate. Reports the daemon's RSS as the
                 leaf cache fills, to show it stays bounded.
  registration N N run registrations one after another, then N more from
                 16 concurrent clients; reports registrations per second
                 and the cost of each hundred as the registry grows, beside
                 two baselines measured in the same run: an admin round
                 trip that touches no disk and a bare durable append
                 (write + fdatasync) in the daemon's home.

Run through bench/soak.sh, bench/leaf_cache.sh and bench/registration.sh
(they build keyward).
KEYWARD_BIN names the binary. Exit status 1 when anything unexpected
happened.
"""

import http.client
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.environ["KEYWARD_BIN"]
SECRET_PREFIX = "kw-soak-SECRET-"

UPSTREAM = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("you sent " + (self.headers.get("authorization") or "")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
srv = S(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


class Admin(http.client.HTTPConnection):
    """HTTP over the daemon's admin socket."""

    def __init__(self, path):
        super().__init__("keyward", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


class Daemon:
    def __init__(self, config):
        self.dir = tempfile.mkdtemp(prefix="kwsoak")
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        self.env = dict(os.environ, KEYWARD_HOME=self.home)
        self.env.pop("KEYWARD_CONFIG", None)
        self.env.pop("RUST_LOG", None)
        with open(os.path.join(self.home, "keyward.toml"), "w") as f:
            f.write(config(self.dir))
        self.cli("daemon", "start", "--detach")
        with open(os.path.join(self.home, "keyward.pid")) as f:
            self.pid = int(f.read())
        with open(os.path.join(self.home, "proxy.port")) as f:
            self.proxy_port = int(f.read())
        self.ca = os.path.join(self.home, "ca", "public", "ca.pem")
        # The process runs belong to: not this one, which the admin API
        # would then treat as inside a run.
        self.holder = subprocess.Popen(["sleep", "infinity"])

    def cli(self, *args, stdin=""):
        out = subprocess.run([BIN, *args], env=self.env, input=stdin.encode(),
                             capture_output=True)
        if out.returncode != 0:
            raise RuntimeError(f"keyward {' '.join(args)}: {out.stderr.decode()}")
        return out.stdout.decode()

    def api(self, method, path, body=None):
        conn = Admin(os.path.join(self.home, "keyward.sock"))
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"content-type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text else None)
        finally:
            conn.close()

    def status(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_kinds(self, ports):
        """The daemon's descriptors by kind; TCP sockets by the port of
        their local or peer end (`ports` names the ones of interest)."""
        inodes = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = "socket (not TCP)"
            else:
                kind = target.split(":")[0] if ":" in target else "file"
                inodes[f"{kind}-{fd}"] = kind
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, peer, inode = cols[1], cols[2], cols[9]
                    if inode in inodes:
                        lport = int(local.rsplit(":", 1)[1], 16)
                        pport = int(peer.rsplit(":", 1)[1], 16)
                        name = ports.get(lport) or ports.get(pport) or "other"
                        state = {"01": "established", "0A": "listening",
                                 "08": "close-wait"}.get(cols[3], cols[3])
                        inodes[inode] = f"tcp {name} {state}"
        kinds = {}
        for kind in inodes.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        return dict(sorted(kinds.items()))

    def errors_in_log(self):
        with open(os.path.join(self.home, "daemon.log"), errors="replace") as f:
            return [l.rstrip() for l in f if " ERROR " in l]


def tls_upstream(dir):
    """A TLS upstream with a leaf for localhost from a fresh test CA."""
    ca, ca_key = os.path.join(dir, "up-ca.pem"), os.path.join(dir, "up-ca.key")
    cert, key = os.path.join(dir, "up.pem"), os.path.join(dir, "up.key")
    csr, ext = os.path.join(dir, "up.csr"), os.path.join(dir, "up.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    for cmd in (
        ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=soak test CA",
         "-keyout", ca_key, "-out", ca],
        ["req", *ec, "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", cert],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, cert, key],
                            stdout=subprocess.PIPE)
    port = int(proc.stdout.readline())
    return proc, port, ca


def soak(minutes):
    upstream = {}

    def config(dir):
        proc, port, ca = tls_upstream(dir)
        upstream.update(proc=proc, port=port)
        return (f'[proxy]\nupstream_ca = ["{ca}"]\nmax_connections = 4096\n\n'
                f'[grants.local]\nsecret = "vault:local"\nhosts = ["localhost:{port}"]\n'
                'inject = { header = "Authorization", format = "Bearer {secret}" }\n')

    d = Daemon(config)
    try:
        return run_soak(d, upstream["port"], minutes)
    finally:
        try:
            d.cli("daemon", "stop")
        except RuntimeError:
            pass
        d.holder.kill()
        upstream["proc"].kill()


def run_soak(d, up_port, minutes):
    secrets = [SECRET_PREFIX + "0"]
    d.cli("secret", "set", "local", stdin=secrets[0])
    lock = threading.Lock()
    runs = {}  # run_id -> token
    retired = set()
    counts = {}
    unexpected = []

    def count(key):
        with lock:
            counts[key] = counts.get(key, 0) + 1

    def problem(what):
        with lock:
            counts["unexpected"] = counts.get("unexpected", 0) + 1
            if len(unexpected) < 20:
                unexpected.append(what)

    def new_run():
        while True:
            # No pid: a process holds one run at most, and these live
            # until the churn removes them.
            status, body = d.api("POST", "/v1/runs", {"grants": ["local"], "label": "soak"})
            if status != 423:
                break
            # A run's grants are resolved when it is created: not while sealed.
            count("registration while sealed")
            time.sleep(0.2)
        if status != 200:
            raise RuntimeError(f"run registration: {status} {body}")
        with lock:
            runs[body["run_id"]] = body["token"]

    started = time.time()
    for _ in range(1000):
        new_run()
    registration = time.time() - started
    fds_start, rss_start = d.fds(), d.status("VmRSS")
    kinds_start = d.fd_kinds({d.proxy_port: "client-side", up_port: "upstream"})
    print(f"registered 1000 runs in {registration:.1f} s; daemon fds {fds_start}, "
          f"RSS {rss_start // 1024} MiB; by kind {json.dumps(kinds_start)}", flush=True)

    ctx = ssl.create_default_context(cafile=d.ca)
    deadline = time.time() + minutes * 60
    stop = threading.Event()
    sealed = threading.Event()
    # Seal cycles begun so far: a request that began before a seal and was
    # answered after the unseal (a slow request) saw the vault sealed too.
    seals_begun = [0]
    peak_fds = [fds_start]

    def client():
        while time.time() < deadline:
            with lock:
                run_id, token = random.choice(list(runs.items()))
            conn = http.client.HTTPSConnection("127.0.0.1", d.proxy_port, context=ctx,
                                               timeout=30)
            conn.set_tunnel("localhost", up_port,
                            headers={"Proxy-Authorization": "Bearer " + token})
            try:
                for _ in range(random.randint(1, 20)):
                    # In this order (the seal cycle sets, then counts).
                    seals_before = seals_begun[0]
                    was_sealed = sealed.is_set()
                    conn.request("GET", "/soak")
                    resp = conn.getresponse()
                    body = resp.read().decode(errors="replace")
                    if any(s in body for s in secrets):
                        problem("a secret reached a client")
                    if resp.status == 200:
                        count("200")
                    elif resp.status == 423 and (was_sealed or sealed.is_set()
                                                 or seals_begun[0] != seals_before):
                        count("423 while sealed")
                    elif resp.status == 407 and run_id in retired:
                        count("run ended mid-tunnel")
                        break
                    else:
                        problem(f"{resp.status}: {body[:200]}")
                    if time.time() >= deadline:
                        break
            except OSError as e:
                gone = run_id in retired or run_id not in runs
                if gone and ("407" in str(e) or isinstance(e, ConnectionError)):
                    count("run ended mid-tunnel")
                else:
                    problem(f"{type(e).__name__}: {e}")
            except http.client.HTTPException as e:
                if run_id in retired:
                    count("run ended mid-tunnel")
                else:
                    problem(f"{type(e).__name__}: {e}")
            finally:
                conn.close()

    def rotate():
        n = 0
        while not stop.wait(1.0):
            n += 1
            value = SECRET_PREFIX + str(n)
            with lock:
                secrets.append(value)
            status, body = d.api("PUT", "/v1/secrets/local", {"value": value})
            if status == 423:
                count("rotation while sealed")
            elif status != 200:
                problem(f"rotation: {status} {body}")
            else:
                count("rotations")

    def seal_cycle():
        while not stop.wait(5.0):
            sealed.set()
            seals_begun[0] += 1
            status, body = d.api("POST", "/v1/vault/seal")
            if status != 200:
                problem(f"seal: {status} {body}")
            stop.wait(1.0)
            status, body = d.api("POST", "/v1/vault/unseal", {})
            if status != 200:
                problem(f"unseal: {status} {body}")
            # Requests decided while sealed may still be answering.
            stop.wait(0.5)
            sealed.clear()
            count("seal cycles")

    def churn():
        while not stop.wait(0.05):
            with lock:
                run_id = random.choice(list(runs))
                retired.add(run_id)
                del runs[run_id]
            status, body = d.api("DELETE", f"/v1/runs/{run_id}")
            if status != 200:
                problem(f"run removal: {status} {body}")
            new_run()
            count("runs replaced")

    def watch():
        while not stop.wait(1.0):
            peak_fds[0] = max(peak_fds[0], d.fds())

    helpers = [threading.Thread(target=f) for f in (rotate, seal_cycle, churn, watch)]
    clients = [threading.Thread(target=client) for _ in range(200)]
    for t in helpers + clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    for t in helpers:
        t.join()
    # Tunnels close as clients hang up; pooled upstream connections close
    # once idle for the pool's timeout (90 s; its reaper ticks as often).
    time.sleep(5)
    fds_after_clients = d.fds()
    settle = time.time()
    while d.fds() > fds_start + 8 and time.time() - settle < 200:
        time.sleep(1)
    fds_end, rss_end, rss_peak = d.fds(), d.status("VmRSS"), d.status("VmHWM")
    settled_in = time.time() - settle
    kinds = d.fd_kinds({d.proxy_port: "client-side", up_port: "upstream"})
    log_errors = d.errors_in_log()
    d.cli("daemon", "stop")
    verify = subprocess.run([BIN, "audit", "verify", "--json"], env=d.env,
                            capture_output=True)
    report = json.loads(verify.stdout or b"{}")

    print(f"requests: {json.dumps(counts, sort_keys=True)}")
    for u in unexpected:
        print(f"  unexpected: {u}")
    print(f"daemon: peak RSS {rss_peak // 1024} MiB (start {rss_start // 1024}, "
          f"end {rss_end // 1024}); fds start {fds_start}, peak {peak_fds[0]}, "
          f"5 s after the clients {fds_after_clients}, end {fds_end} "
          f"({settled_in + 5:.0f} s after the clients)")
    print(f"daemon fds at the end by kind: {json.dumps(kinds)}")
    print(f"daemon log ERROR lines: {len(log_errors)}")
    for line in log_errors[:5]:
        print(f"  {line}")
    print(f"audit verify: exit {verify.returncode}, valid {report.get('valid')}, "
          f"records {report.get('records')}, errors {report.get('error_count')}")
    ok = (not counts.get("unexpected") and verify.returncode == 0 and not log_errors)
    return 0 if ok else 1


def leaf_cache(hosts):
    d = Daemon(lambda dir: "")
    try:
        status, body = d.api("POST", "/v1/runs", {"grants": [], "pid": d.holder.pid})
        assert status == 200, body
        token = body["token"]
        rss_start = d.status("VmRSS")
        print(f"daemon RSS before: {rss_start // 1024} MiB", flush=True)
        next_host = iter(range(hosts))
        lock = threading.Lock()
        failures = []
        done = [0]
        started = time.time()

        def connect():
            while True:
                with lock:
                    i = next(next_host, None)
                if i is None:
                    return
                s = socket.create_connection(("127.0.0.1", d.proxy_port), timeout=30)
                try:
                    s.sendall((f"CONNECT h{i}.leaf-cache.invalid:443 HTTP/1.1\r\n"
                               f"Host: h{i}.leaf-cache.invalid:443\r\n"
                               f"Proxy-Authorization: Bearer {token}\r\n\r\n").encode())
                    head = s.recv(4096)
                    if not head.startswith(b"HTTP/1.1 200"):
                        with lock:
                            failures.append(head[:80])
                finally:
                    s.close()
                with lock:
                    done[0] += 1
                    if done[0] % 10000 == 0:
                        print(f"{done[0]} hosts: RSS {d.status('VmRSS') // 1024} MiB, "
                              f"{time.time() - started:.0f} s", flush=True)

        threads = [threading.Thread(target=connect) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        print(f"after {hosts} distinct hosts: RSS {d.status('VmRSS') // 1024} MiB, "
              f"peak {d.status('VmHWM') // 1024} MiB, fds {d.fds()}, failures {len(failures)}")
        for f in failures[:5]:
            print(f"  {f!r}")
        return 1 if failures else 0
    finally:
        d.cli("daemon", "stop")
        d.holder.kill()


def registration(n):
    d = Daemon(lambda dir: '[grants.local]\nsecret = "vault:local"\nhosts = ["localhost"]\n'
               'inject = { header = "Authorization", format = "Bearer {secret}" }\n')
    try:
        d.cli("secret", "set", "local", stdin="kw-bench-registration")
        # No pid: a process holds one run at most.
        body = {"grants": ["local"], "label": "bench"}

        def register():
            status, answer = d.api("POST", "/v1/runs", body)
            if status != 200:
                raise RuntimeError(f"run registration: {status} {answer}")

        def timed(what, count, clients, step):
            """`count` calls of `step` from `clients` threads: seconds."""
            left = iter(range(count))
            lock = threading.Lock()

            def worker():
                while True:
                    with lock:
                        if next(left, None) is None:
                            return
                    step()

            started = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - started
            print(f"{what}: {count} in {took:.2f} s, {count / took:.0f}/s, "
                  f"{took / count * 1000:.2f} ms each", flush=True)
            return took

        round_trip = timed("baseline: admin round trip (GET /v1/health)", 200, 1,
                           lambda: d.api("GET", "/v1/health"))
        journal = os.path.join(d.home, "bench-append")
        fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        line = json.dumps(body).encode() * 2 + b"\n"
        bare = timed("baseline: durable append (write + fdatasync)", 200, 1,
                     lambda: (os.write(fd, line), os.fdatasync(fd)))
        os.close(fd)
        os.unlink(journal)
        hundreds = []
        for _ in range(max(n // 100, 1)):
            started = time.perf_counter()
            for _ in range(min(n, 100)):
                register()
            hundreds.append(time.perf_counter() - started)
        sequential = sum(hundreds)
        count = max(n // 100, 1) * min(n, 100)
        print(f"sequential registrations: {count} in {sequential:.2f} s, "
              f"{count / sequential:.0f}/s, {sequential / count * 1000:.2f} ms each "
              f"({sequential / count / (round_trip / 200 + bare / 200):.1f}x a round trip "
              f"plus a durable append)")
        print("  ms per registration by hundred: "
              + " ".join(f"{h * 10:.1f}" for h in hundreds), flush=True)
        timed(f"concurrent registrations (16 clients, registry at {count})", n, 16, register)
        sizes = ", ".join(f"{name} {os.path.getsize(os.path.join(d.home, name)) // 1024} KiB"
                          for name in sorted(os.listdir(d.home)) if name.startswith("runs.json"))
        print(f"{sizes}; daemon RSS {d.status('VmRSS') // 1024} MiB")
        return 0
    finally:
        d.cli("daemon", "stop")
        d.holder.kill()


if __name__ == "__main__":
    what, n = sys.argv[1], sys.argv[2]
    modes = {"soak": lambda: soak(float(n)), "leaf-cache": lambda: leaf_cache(int(n)),
             "registration": lambda: registration(int(n))}
    sys.exit(modes[what]())
