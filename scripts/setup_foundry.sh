#!/usr/bin/env bash
# Create .venv-foundry/: llm-foundry 0.22.0 and reweigh together, as an llm-foundry user installs them, from the
# lock requirements/foundry.txt. llm-foundry 0.22 pins the old end of reweigh's ranges (Streaming 0.12,
# transformers 4.51, datasets < 3.7), so this environment also tests reweigh there. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh .venv-foundry requirements/foundry.txt llm-foundry mosaicml mosaicml-streaming transformers
