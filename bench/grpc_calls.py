#!/usr/bin/env python3
"""Unary gRPC calls through keyward beside direct calls, in the same run.

A local grpcio server over TLS (a fresh test CA and a leaf for localhost)
answers a unary echo and requires `authorization: Bearer <secret>`. The
same client makes CALLS sequential unary calls on one channel (one HTTP/2
connection, concurrency 1):

  direct    the client sends the header itself and trusts the test CA;
  keyward   the client runs under `keyward run --grant bench`, which
            injects the header (the client holds only a placeholder),
            and trusts keyward's CA through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH;
            every response is scrubbed and every call recorded as evidence.

Direct and proxied alternate for ROUNDS rounds; the median round of each is
printed, with the ratio and every round's ratio.
Usage: bench/grpc_calls.py path/to/keyward [calls] [rounds]
       (bench/grpc_calls.py client PORT CALLS: the client side, run by the above)
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SECRET = "kw-bench-grpc-secret-7c1d0e"


def serve(cert, key):
    from concurrent import futures

    import grpc

    expected = "Bearer " + SECRET

    def unary(request, context):
        if dict(context.invocation_metadata()).get("authorization") != expected:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid authorization")
        return request

    handlers = grpc.method_handlers_generic_handler(
        "kw.Bench", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handlers,))
    with open(cert, "rb") as c, open(key, "rb") as k:
        creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
    print(server.add_secure_port("127.0.0.1:0", creds), flush=True)
    server.start()
    server.wait_for_termination()


def client(port, calls):
    """Prints {"calls_per_s", "p50_us"} for CALLS sequential unary calls."""
    import grpc

    channel = grpc.secure_channel("localhost:" + port, grpc.ssl_channel_credentials())
    unary = channel.unary_unary("/kw.Bench/Unary")
    # Sent only by the direct client; keyward injects it otherwise.
    metadata = (("authorization", "Bearer " + SECRET),) if "HTTPS_PROXY" not in os.environ else ()
    payload = b"x" * 64
    for _ in range(50):  # warm-up: connection, TLS, HTTP/2 settings
        unary(payload, metadata=metadata, timeout=10)
    took = []
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter_ns()
        unary(payload, metadata=metadata, timeout=10)
        took.append(time.perf_counter_ns() - t)
    total = time.perf_counter() - start
    print(json.dumps({"calls_per_s": calls / total, "p50_us": statistics.median(took) / 1000}))


def certificates(dir):
    """A test CA and a leaf for localhost, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca, key, csr, cert, ext = (
        os.path.join(dir, n) for n in ("ca.key", "ca.pem", "leaf.key", "leaf.csr", "leaf.pem", "ext")
    )
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=keyward bench CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext)
    return ca, cert, key


def main():
    keyward = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    work = tempfile.mkdtemp(prefix="kwgrpc")
    home = os.path.join(work, "home")
    os.mkdir(home, 0o700)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["KEYWARD_HOME"] = home
    env.pop("KEYWARD_CONFIG", None)
    server = None
    try:
        ca, cert, key = certificates(work)
        server = subprocess.Popen([sys.executable, __file__, "serve", cert, key], stdout=subprocess.PIPE)
        port = server.stdout.readline().decode().strip()
        with open(os.path.join(home, "keyward.toml"), "w") as f:
            f.write(
                f'[proxy]\nupstream_ca = ["{ca}"]\n\n[grants.bench]\nsecret = "vault:bench"\n'
                f'hosts = ["localhost:{port}"]\n'
                'inject = { header = "Authorization", format = "Bearer {secret}" }\n'
            )
        stored = subprocess.run([keyward, "secret", "set", "bench"], input=SECRET.encode(),
                                env=env, capture_output=True)
        if stored.returncode != 0:
            sys.exit("keyward secret set failed: " + stored.stderr.decode())
        me = [sys.executable, __file__, "client", port, str(calls)]
        direct_env = dict(env, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=ca)

        def measure(cmd, env):
            out = subprocess.run(cmd, env=env, check=True, capture_output=True).stdout
            return json.loads(out.decode().strip().splitlines()[-1])

        direct, proxied = [], []
        for _ in range(rounds):
            direct.append(measure(me, direct_env))
            proxied.append(measure([keyward, "run", "--grant", "bench", "--", *me], env))

        def median(rows):
            return sorted(rows, key=lambda r: r["calls_per_s"])[len(rows) // 2]

        d, p = median(direct), median(proxied)
        print(f"unary gRPC over TLS, {calls} sequential calls on one channel, median of {rounds} rounds")
        print(f"  direct    {d['calls_per_s']:8.0f} calls/s   p50 {d['p50_us']:7.0f} us")
        print(f"  keyward   {p['calls_per_s']:8.0f} calls/s   p50 {p['p50_us']:7.0f} us")
        print(f"  ratio     {p['calls_per_s'] / d['calls_per_s']:8.2f} x throughput   "
              f"p50 +{p['p50_us'] - d['p50_us']:.0f} us ({p['p50_us'] / d['p50_us']:.2f} x)")
        print("  rounds    " + "  ".join(
            f"{pr['calls_per_s'] / dr['calls_per_s']:.2f}" for dr, pr in zip(direct, proxied)))
    finally:
        subprocess.run([keyward, "daemon", "stop"], env=env, capture_output=True)
        if server:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(*sys.argv[2:4])
    elif sys.argv[1:2] == ["client"]:
        client(sys.argv[2], int(sys.argv[3]))
    else:
        main()
