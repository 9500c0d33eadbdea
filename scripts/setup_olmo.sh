#!/usr/bin/env bash
# Create .venv-olmo/: reweigh without Composer beside OLMo-core, from the lock requirements/olmo.txt (torch 2.13.0, the
# newest OLMo-core 3.0 admits, transformers 5.x, OLMo-core and the test extra). The tests that need Composer or
# Streaming are left out there (tests/conftest.py); everything else runs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh .venv-olmo requirements/olmo.txt torch transformers ai2-olmo-core
