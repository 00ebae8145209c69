#!/usr/bin/env bash
# Builds the release binary and prints the lifecycle figures of issue 2.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p keyward
exec python3 bench/lifecycle.py "$PWD/target/release/keyward" "$@"
