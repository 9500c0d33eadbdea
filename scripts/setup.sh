#!/usr/bin/env bash
# Create the project's virtual environment at .venv/ (if absent) and install the main lock into it
# (requirements/main.txt: reweigh's dependencies with its test, spark and hf extras, every version pinned and
# hash-checked), then reweigh itself, editable. Safe to re-run. `pip install reweigh` users get pyproject.toml's
# ranges instead; the lock is what CI, the Quickstart and reproducible runs use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh .venv requirements/main.txt
echo "reweigh setup: done ($(.venv/bin/reweigh --version))"
