#!/usr/bin/env bash
# Soak of a real daemon for MINUTES (default 5), loopback only: 1,000
# registered runs, 200 concurrent clients through the proxy, while the
# secret rotates, the vault seals and unseals and runs come and go. Prints
# unexpected errors (target 0), peak RSS, the daemon's descriptors at start
# and end, and `keyward audit verify` afterwards; exit 1 on anything
# unexpected. KEYWARD_BIN picks a binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${KEYWARD_BIN:-} ]]; then
    nice -n 19 cargo build -q --release --locked -p keyward
    KEYWARD_BIN=$PWD/target/release/keyward
fi
export KEYWARD_BIN
exec nice -n 19 python3 bench/soak.py soak "${1:-5}"
