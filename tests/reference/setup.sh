#!/usr/bin/env bash
# Build the reference virtualenv (DeepLenseSim's pinned lenstronomy 1.9.2) that tests/test_replica_callpath.py
# executes DeepLenseSim's call path in. Idempotent: a complete venv is kept (it records its requirements).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${LENSNET_REFERENCE_VENV:-$here/../../.ci/reference-venv}"
if [ -x "$venv/bin/python" ] && cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  exit 0
fi
rm -rf "$venv.tmp"
python -m venv "$venv.tmp"
"$venv.tmp/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$venv.tmp/requirements.txt"
rm -rf "$venv"
mv "$venv.tmp" "$venv"
