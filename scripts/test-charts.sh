#!/usr/bin/env bash
# The Helm chart tests: renders charts/ with the Helm engine (helm-python-sdk, no helm binary) and validates the
# result. Needs target/debug/meshctl (cargo build --bins) for the CRD comparison. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-charts
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/charts/requirements.txt
# No __pycache__ or .pytest_cache left in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider tests/charts -q "$@"
