#!/usr/bin/env bash
# Runs every test: unit tests, the end-to-end tests in network namespaces (as root; skipped otherwise), and the
# Helm chart tests (rendered with the real Helm engine). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace "$@"
scripts/test-charts.sh
