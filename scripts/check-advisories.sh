#!/usr/bin/env bash
# RustSec advisories for every dependency, offline, against a local clone of the advisory database
# (github.com/rustsec/advisory-db; this project's machines cannot fetch it themselves).
# Usage: scripts/check-advisories.sh /path/to/advisory-db-clone
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:?usage: $0 /path/to/advisory-db clone}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cargo-deny looks for the database under db-path in a folder named after the URL's hash.
mkdir -p "$work/dbs"
cp -r "$db" "$work/dbs/advisory-db-3157b0e258782691"
touch "$work/dbs/advisory-db-3157b0e258782691/.git/FETCH_HEAD"
cat > "$work/deny.toml" <<TOML
[advisories]
db-path = "$work/dbs"
db-urls = ["https://github.com/rustsec/advisory-db"]
TOML
echo "advisory database: $(git -C "$db" log -1 --format='%h %cs')"
cargo deny --offline --config "$work/deny.toml" check advisories
