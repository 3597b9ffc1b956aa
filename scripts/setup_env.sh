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
.venv/bin/python -m pip install -q "${reqs[@]}" -c constraints.txt torch==2.14.1 torchvision==0.29.1
