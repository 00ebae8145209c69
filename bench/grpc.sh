#!/usr/bin/env bash
# Unary gRPC calls per second and p50 latency through keyward beside direct
# calls, measured in the same run (issue 16). Needs python3 with grpcio and
# openssl; builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p keyward
exec python3 bench/grpc_calls.py "$PWD/target/release/keyward" "$@"
