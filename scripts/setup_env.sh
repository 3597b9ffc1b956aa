#!/usr/bin/env bash
# Creates .venv with torch 2.14.1 + torchvision 0.29.1 and the project's requirements.
#   bash scripts/setup_env.sh          runtime requirements
#   bash scripts/setup_env.sh --test   plus the test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -e .venv/bin/python ] || [ -L .venv/bin/python ]; then
  # no pip: made while ensurepip was missing (Debian without python3-venv), or its Python is gone (a dangling
  # link); PYTHON naming another version asks for a new one too
  if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    echo "note: .venv's python cannot run pip (made without python3-venv, or its Python was removed): making it again" >&2
    "$PY" -m venv --clear .venv
  elif [ -n "${PYTHON:-}" ] && [ "$(version .venv/bin/python)" != "$(version "$PY")" ]; then
    echo "note: .venv has Python $(version .venv/bin/python), PYTHON=$PY is $(version "$PY"): making .venv again" >&2
    "$PY" -m venv --clear .venv
  fi
else
  "$PY" -m venv .venv
fi
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
