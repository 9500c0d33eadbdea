#!/usr/bin/env bash
# Create the project's virtual environment at .venv/ (if absent) and install reweigh with its test, spark
# and hf extras into it. Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "reweigh setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "reweigh setup: installing reweigh and its dependencies into .venv (first run downloads torch, ~5 min)"
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[test,spark,hf]"
echo "reweigh setup: done ($(.venv/bin/reweigh --version))"
