#!/usr/bin/env bash
# Create .venv-foundry/: llm-foundry 0.22.0 and reweigh together, as an llm-foundry user installs them.
# llm-foundry 0.22 pins the old end of reweigh's ranges (Streaming 0.12, transformers 4.51, datasets < 3.7),
# so this environment also tests reweigh there. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-foundry/bin/python ]; then
    echo "reweigh setup (llm-foundry): creating .venv-foundry with $($PYTHON --version)"
    "$PYTHON" -m venv .venv-foundry
fi
.venv-foundry/bin/python -m pip install --quiet --upgrade pip
echo "reweigh setup (llm-foundry): installing llm-foundry 0.22.0 and reweigh into .venv-foundry"
.venv-foundry/bin/python -m pip install --quiet --progress-bar off "llm-foundry==0.22.0" -e ".[test]"
.venv-foundry/bin/python -c "import llmfoundry, streaming, transformers; print('reweigh setup (llm-foundry): done', \
'(llm-foundry', llmfoundry.__version__ + ', streaming', streaming.__version__ + ', transformers', transformers.__version__ + ')')"
