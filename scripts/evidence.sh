#!/usr/bin/env bash
# The multi-seed A/B study of docs/evidence.md: uniform, LinUpper and Quadratic, 3 seeds each, on the embedded
# default corpus with the demo model (yamls/tiny-cpu.yaml, 500 steps, evaluated every 50), in two settings:
#   natural        the corpus as it is (boilerplate is 37% of the training sequences)
#   boilerplate70  the training mix changed to 70% boilerplate (validation unchanged)
# Each setting is one `reweigh sweep` (9 runs, about 16 minutes on 2 CPU cores) followed by `reweigh compare`.
# Then the loop from history to the next run: `reweigh curate` the natural LinUpper run (seed 17) into
#   data/curated-natural  its training samples without those consistently weighted below 0.5x uniform, and
#   proportions.yaml      the domain mix its weights point to,
# train uniform and LinUpper on the curated data and uniform on the proposed mix (3 seeds each, about 16
# minutes), and compare them with the natural runs at equal steps (every sequence has 256 tokens, so equal
# steps are equal tokens). Finished runs are skipped, so the script continues where it stopped. The reports
# land in runs/evidence/<setting>/compare/ and their curves are copied to docs/evidence/.
set -euo pipefail
cd "$(dirname "$0")/.."
reweigh=.venv/bin/reweigh
common=(yamls/tiny-cpu.yaml eval_interval=50ba)
arms=(--arms uniform,linupper,quadratic --seeds 3)

"$reweigh" sweep "${common[@]}" "${arms[@]}" --name natural --out runs/evidence/natural
"$reweigh" sweep "${common[@]}" 'train_loader.dataset.proportions={code: 0.15, docs: 0.15, boilerplate: 0.7}' \
    "${arms[@]}" --name boilerplate70 --out runs/evidence/boilerplate70

source=runs/evidence/natural/natural-linupper-s17
"$reweigh" curate "$source" --out data/curated-natural --overwrite --drop-below 0.5 --min-visits 2 \
    --proportions --proportions-out runs/evidence/proportions.yaml
mix=$(.venv/bin/python -c "import yaml, json; print(json.dumps(yaml.safe_load(open('runs/evidence/proportions.yaml'))['train_loader']['dataset']['proportions']))")
"$reweigh" sweep "${common[@]}" train_loader.dataset.local=data/curated-natural \
    eval_loader.dataset.local=data/curated-natural --arms uniform,linupper --seeds 3 \
    --name curated --out runs/evidence/curated --no-compare
"$reweigh" sweep "${common[@]}" "train_loader.dataset.proportions=$mix" --arms uniform --seeds 3 \
    --name remixed --out runs/evidence/remixed --no-compare
"$reweigh" compare runs/evidence/natural/natural-* curated-uniform=runs/evidence/curated/curated-uniform-s{17,18,19} \
    curated-linupper=runs/evidence/curated/curated-linupper-s{17,18,19} remixed=runs/evidence/remixed/remixed-uniform-s{17,18,19} \
    --out runs/evidence/curation/compare

mkdir -p docs/evidence
for setting in natural boilerplate70 curation; do
    cp "runs/evidence/$setting/compare/curves.png" "docs/evidence/$setting-curves.png"
done
