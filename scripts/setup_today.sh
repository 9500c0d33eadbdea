#!/usr/bin/env bash
# Create .venv-today/: reweigh without Composer on today's stack, from the lock requirements/today.txt (torch 2.15.0,
# transformers 5.x, torchtitan 0.3 and the test extra). The tests that need Composer or Streaming are left out there
# (tests/conftest.py); everything else runs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh .venv-today requirements/today.txt torch transformers torchtitan
