#!/usr/bin/env bash
# The cost of the sandbox's fence, as ratios measured in the same run:
#  - start-up: `keyward run --sandbox -- true` (Landlock, the seccomp
#    filter and the private network namespace) and `--sandbox=no-netns`
#    against `keyward run -- true` (hyperfine if installed, else a loop
#    timed with `date +%s%N`, median of N);
#  - proxied HTTPS requests/s at concurrency 1 and 64, made by curl inside
#    the run: through the bridge (`--sandbox`, the namespace's
#    127.0.0.1:<proxy port> relayed by `keyward run` to the proxy) against
#    the proxy reached directly (`--sandbox=no-netns`, everything else the
#    same); the two alternate for 3 rounds, the median round is shown with
#    every round's ratio.
# Everything stays on loopback: a local TLS origin (nginx where installed,
# else Python asyncio; keep-alive
# HTTP/1.1, a certificate made with openssl), a throwaway keyward home.
#
# KEYWARD_BIN=path/to/keyward skips the release build; N (start-ups, 20),
# REQS1 (requests at c=1, 300) and REQS64 (at c=64, 3000) tune the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KEYWARD_BIN:-}" ]; then
    cargo build --release --locked -q -p keyward
    KEYWARD_BIN="$PWD/target/release/keyward"
fi
N=${N:-20}
REQS1=${REQS1:-300}
REQS64=${REQS64:-3000}
for tool in curl python3 openssl; do
    command -v "$tool" >/dev/null || { echo "bench/sandbox.sh needs $tool" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/kwbench.XXXXXX)
export KEYWARD_HOME="$dir/home"
unset KEYWARD_CONFIG RUST_LOG
work="$dir/work"
mkdir -p "$work" "$KEYWARD_HOME"
origin_pid=""
cleanup() {
    "$KEYWARD_BIN" daemon stop >/dev/null 2>&1 || true
    [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# The origin: TLS (a leaf for localhost from a throwaway CA), HTTP/1.1
# keep-alive, a fixed 2-byte answer.
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -days 1 -subj /CN=bench-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req $ec -subj /CN=localhost -keyout "$dir/origin.key" -out "$dir/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' > "$dir/ext"
openssl x509 -req -in "$dir/origin.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 1 -extfile "$dir/ext" -out "$dir/origin.pem" 2>/dev/null
chmod 644 "$dir/ca.pem"
if command -v nginx >/dev/null; then
    # nginx (one worker, keep-alive): fast enough that the origin is not
    # what is measured.
    origin_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$origin_port ssl;
    ssl_certificate $dir/origin.pem; ssl_certificate_key $dir/origin.key;
    location / { return 200 "ok"; }
  }
}
NGINX
    nginx -c "$dir/nginx.conf"
    for _ in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
    origin_pid=$(cat "$dir/nginx.pid")
    echo "origin: nginx on 127.0.0.1:$origin_port"
else
cat > "$dir/origin.py" <<'EOF'
import asyncio, ssl, sys
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESP)
            await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
EOF
coproc ORIGIN { exec python3 "$dir/origin.py" "$dir/origin.pem" "$dir/origin.key"; }
origin_pid=$ORIGIN_PID
read -r origin_port <&"${ORIGIN[0]}"
    echo "origin: python asyncio on 127.0.0.1:$origin_port (no nginx: the origin may be the bottleneck)"
fi

cat > "$KEYWARD_HOME/keyward.toml" <<EOF
[proxy]
upstream_ca = ["$dir/ca.pem"]

[grants.bench]
secret = "vault:bench-token"
hosts = ["localhost:$origin_port"]
inject = { header = "Authorization", format = "Bearer {secret}" }
EOF
echo -n "bench-secret-value" | "$KEYWARD_BIN" secret set bench-token >/dev/null 2>&1
cd "$work"

ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== start-up: keyward run [--sandbox] -- true (median of $N) =="
startup() {
    if command -v hyperfine >/dev/null; then
        hyperfine -N -w 3 -r "$N" --export-json "$dir/h.json" "$KEYWARD_BIN run $* -- true" >/dev/null 2>&1
        python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["results"][0]["median"]*1e6))' "$dir/h.json"
    else
        "$KEYWARD_BIN" run "$@" -- true 2>/dev/null
        for _ in $(seq "$N"); do
            s=$(ns); "$KEYWARD_BIN" run "$@" -- true 2>/dev/null; e=$(ns)
            echo $(((e - s) / 1000))
        done | median
    fi
}
plain=$(startup)
nonetns=$(startup --sandbox=no-netns)
fenced=$(startup --sandbox)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '%-34s %8s us\n' "keyward run -- true" "$plain"
printf '%-34s %8s us  %sx\n' "keyward run --sandbox=no-netns" "$nonetns" "$(ratio "$nonetns" "$plain")"
printf '%-34s %8s us  %sx\n' "keyward run --sandbox" "$fenced" "$(ratio "$fenced" "$plain")"

# One run, K requests by curl at concurrency C; prints requests/s.
urls="$work/urls"
proxied() {
    local mode=$1 c=$2 k=$3
    : > "$urls"
    for _ in $(seq "$k"); do
        printf 'url = "https://localhost:%s/"\noutput = "/dev/null"\n' "$origin_port" >> "$urls"
    done
    local par=""
    [ "$c" -gt 1 ] && par="-Z --parallel-max $c"
    "$KEYWARD_BIN" run "$mode" --grant bench -- sh -c \
        "s=\$(date +%s%N); curl -s $par -K '$urls' -w '%{http_code}\\n' > codes; e=\$(date +%s%N); \
         bad=\$(grep -vc '^200\$' codes); [ \"\$bad\" = 0 ] || echo \"\$bad of $k requests failed\" >&2; \
         python3 -c \"print(int($k / ((\$e - \$s) / 1e9)))\"" 2>"$dir/run.err" || { cat "$dir/run.err" >&2; exit 1; }
    grep 'requests failed' "$dir/run.err" >&2 || true
}

for c in 1 64; do
    k=$REQS1
    [ "$c" -gt 1 ] && k=$REQS64
    echo "== proxied HTTPS requests/s, concurrency $c ($k requests per round, curl inside the run) =="
    rounds=""
    for round in 1 2 3; do
        direct=$(proxied --sandbox=no-netns "$c" "$k")
        bridged=$(proxied --sandbox "$c" "$k")
        r=$(ratio "$bridged" "$direct")
        rounds="$rounds$r $direct $bridged"$'\n'
    done
    mid=$(printf '%s' "$rounds" | sort -n | sed -n 2p)
    read -r r direct bridged <<<"$mid"
    printf '%-34s %8s req/s\n' "proxy direct (--sandbox=no-netns)" "$direct"
    printf '%-34s %8s req/s  %sx  (rounds: %s)\n' "through the bridge (--sandbox)" "$bridged" "$r" \
        "$(printf '%s' "$rounds" | awk '{printf "%s%s", sep, $1; sep=", "}')"
done
