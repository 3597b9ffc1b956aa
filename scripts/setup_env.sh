#!/usr/bin/env bash
# Creates .venv with torch 2.14.1 + torchvision 0.29.1 and the project's requirements.
#   bash scripts/setup_env.sh          runtime requirements
#   bash scripts/setup_env.sh --test   plus the test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
reqs=(-r requirements.txt)
[ "${1:-}" = "--test" ] && reqs+=(-r requirements-test.txt)
# torch is pinned as installed so nothing replaces it; constraints.txt holds the tested versions of the rest
# (made on Python 3.11: older Pythons get the newest versions in requirements.txt's ranges instead)
cons=(-c constraints.txt)
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "note: Python older than 3.11: installing without constraints.txt (untested versions)" >&2
  cons=()
fi
.venv/bin/python -m pip install -q "${reqs[@]}" ${cons[@]+"${cons[@]}"} torch==2.14.1 torchvision==0.29.1
