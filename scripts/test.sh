#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end tests in network namespaces (as root; skipped otherwise).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace "$@"
