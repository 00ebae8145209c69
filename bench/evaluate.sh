#!/usr/bin/env bash
# The figures of issue 5, each beside its baseline from the same run:
#   policy evaluation alone (criterion; built-in pack, 1,000-rule pack)
#   evidence appends/s: one writer (fsync each) vs 64 (group commit);
#   verify throughput as a ratio to sha256sum over the same files
#   POST /v1/evaluate over the socket, 1 and 16 keep-alive clients, as a
#   ratio to a bare HTTP/1.1 echo over the same kind of socket; then
#   Evaluate over the gRPC API (TLS, token) with 1 and 16 streams, as a
#   ratio to the socket in the same rounds
#   the token check per request (criterion, keyward-auth)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p keyward-policy --bench evaluate
cargo bench -q -p keyward-evidence --bench evidence
cargo bench -q -p keyward --bench evaluate
cargo bench -q -p keyward-auth --bench token_check
