#!/usr/bin/env bash
# Run registration under a growing registry (issue 14): N (default 1,000)
# registrations one after another, then N more from 16 concurrent clients,
# beside an admin round trip and a bare durable append measured in the
# same run. KEYWARD_BIN picks a binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${KEYWARD_BIN:-} ]]; then
    nice -n 19 cargo build -q --release --locked -p keyward
    KEYWARD_BIN=$PWD/target/release/keyward
fi
export KEYWARD_BIN
exec nice -n 19 python3 bench/soak.py registration "${1:-1000}"
