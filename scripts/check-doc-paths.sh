#!/usr/bin/env bash
# Every repository path the docs cite in backticks exists (`core/src/{ca,certs}.rs` counts as two). Run by CI, so a
# moved file fails the build until the docs follow it.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for doc in README.md ARCHITECTURE.md BENCHMARKS.md RELIABILITY.md docs/*.md charts/*/README.md; do
  [ -f "$doc" ] || continue
  # Backticked tokens that look like repository paths: a first segment that is a top-level folder of this repo.
  while read -r cited; do
    path=${cited%%::*}          # `file.rs::function` names a file
    path=${path%/}
    for p in $(eval echo "$path"); do   # brace expansion of {a,b}
      if [ ! -e "$p" ]; then
        echo "$doc cites $cited, but $p does not exist" >&2
        status=1
      fi
    done
  done < <(grep -oE '`[A-Za-z0-9_.{},/-]+(::[A-Za-z_]+)?`' "$doc" | tr -d '`' | grep '/' |
           while read -r t; do top=${t%%/*}; [ -d "$top" ] && [ "$top" != "." ] && echo "$t"; done | sort -u)
done
[ "$status" -eq 0 ] && echo "doc paths: every cited path exists"
exit "$status"
