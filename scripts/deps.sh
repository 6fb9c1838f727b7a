#!/usr/bin/env bash
# Installs the Debian packages the mesh's tests and local run need, when root and any are missing.
# Network namespaces, iptables and the CNI plugins are the "nodes" and "pods" of the local cluster.
set -euo pipefail
need=(iptables iproute2 containernetworking-plugins tcpdump iperf3 haproxy umoci runc prometheus curl chromium)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Python packages for interop tests, in the project's own venv.
venv() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import h2" 2>/dev/null; then
    python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt \
      || echo "deps: could not set up .venv (interop tests will be skipped)" >&2
  fi
}
cd "$(dirname "$0")/.."
venv
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "deps: missing Debian packages: ${missing[*]} (run as root to install them; netns tests will be skipped)" >&2
  exit 0
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
