#!/usr/bin/env bash
# Runs the mesh locally: a two-node cluster of network namespaces, a ztunnel per node, demo apps, and
# demo traffic through it. Needs root (network namespaces). `--once` checks the traffic and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins
exec target/debug/mesh-local "$@"
