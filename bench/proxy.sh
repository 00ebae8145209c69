#!/usr/bin/env bash
# Proxy figures of issue 4: throughput and latency through keyward against a
# direct connection (concurrency 1 and 64), the cost of a new CONNECT + TLS
# handshake, and RSS. Everything runs locally in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -q -p keyward-proxy --bench proxy
