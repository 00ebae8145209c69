#!/usr/bin/env bash
# The proxy's leaf-certificate cache under HOSTS (default 50,000) distinct
# host names, each a CONNECT that makes the proxy mint a certificate:
# prints the daemon's RSS as the cache fills (it is bounded, so it levels
# off). Loopback only: the names end in .invalid and nothing resolves
# them. KEYWARD_BIN picks a binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${KEYWARD_BIN:-} ]]; then
    nice -n 19 cargo build -q --release --locked -p keyward
    KEYWARD_BIN=$PWD/target/release/keyward
fi
export KEYWARD_BIN
exec nice -n 19 python3 bench/soak.py leaf-cache "${1:-50000}"
