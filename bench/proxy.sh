#!/usr/bin/env bash
# Proxy figures: throughput and latency through keyward against a direct
# connection (concurrency 1 and 64), the cost of a new CONNECT + TLS
# handshake, RSS and the cost of scrubbing (bench "proxy"); then the three
# ways in (forward proxy, base URL, fd broker) against the physical bar, an
# nginx null relay doing the same TLS and parsing work with no logic (bench
# "ways"). Everything stays on loopback.
#
# Needs nginx and openssl for the relay (apt-get install nginx-light
# openssl); without nginx the "ways" bench runs with an in-process origin
# and no relay line.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p keyward-proxy --bench proxy
relay=""
if command -v nginx >/dev/null && command -v openssl >/dev/null; then
    dir=$(mktemp -d)
    read -r origin relay_port ca origin_pid relay_pid < <(bash bench/null-relay.sh "$dir")
    trap 'kill "$origin_pid" "$relay_pid" 2>/dev/null; rm -rf "$dir"' EXIT
    # The relay's master pid last: the bench reads its workers' CPU time.
    relay="$origin $relay_port $ca $origin_pid $relay_pid"
fi
KEYWARD_BENCH_RELAY="$relay" cargo bench -q -p keyward-proxy --bench ways
