#!/usr/bin/env bash
# The multi-seed A/B study of docs/evidence.md: uniform, LinUpper and Quadratic, 3 seeds each, on the embedded
# default corpus with the demo model (yamls/tiny-cpu.yaml, 500 steps, evaluated every 50), in two settings:
#   natural        the corpus as it is (boilerplate is 37% of the training sequences)
#   boilerplate70  the training mix changed to 70% boilerplate (validation unchanged)
# Each setting is one `reweigh sweep` (9 runs, about 16 minutes on 2 CPU cores) followed by `reweigh compare`;
# finished runs are skipped, so the script continues where it stopped. The reports land in
# runs/evidence/<setting>/compare/ and their curves are copied to docs/evidence/.
set -euo pipefail
cd "$(dirname "$0")/.."
reweigh=.venv/bin/reweigh
common=(yamls/tiny-cpu.yaml eval_interval=50ba)
arms=(--arms uniform,linupper,quadratic --seeds 3)

"$reweigh" sweep "${common[@]}" "${arms[@]}" --name natural --out runs/evidence/natural
"$reweigh" sweep "${common[@]}" 'train_loader.dataset.proportions={code: 0.15, docs: 0.15, boilerplate: 0.7}' \
    "${arms[@]}" --name boilerplate70 --out runs/evidence/boilerplate70

mkdir -p docs/evidence
for setting in natural boilerplate70; do
    cp "runs/evidence/$setting/compare/curves.png" "docs/evidence/$setting-curves.png"
done
