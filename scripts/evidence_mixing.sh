#!/usr/bin/env bash
# The online-mixing study of docs/evidence.md: on the embedded default corpus with the demo model
# (yamls/tiny-cpu.yaml, 500 steps, evaluated every 50), 3 seeds each, in the natural mix and the 70% boilerplate mix:
#   uniform        no reweighting, the stream as prepared (Streaming's shuffle and proportions)
#   linupper       LinUpper (r = 1, 100 warm-up steps), the same stream
#   mix            `weights` online mixing alone: LinUpper's weights, computed for the policy only, steer the mix
#   mix-linupper   `weights` online mixing and LinUpper training together (the mix moves once the warm-up ends)
#   odm            the ODM bandit (Albalak et al., 2023) steering the mix, no reweighting
#   mix-uniform, mix-linupper-uniform
#                  the two `weights` arms with `anchor: uniform`: the mix starts from equal proportions, as ODM's does
# Mixing arms: an update every 25 steps, applied 8 steps later; `weights` with temperature 0.5, floor 0.05 and
# smoothing 0.5. Every run trains 500 x 8 x 256 tokens, so equal steps are equal tokens. Each setting is one
# `reweigh sweep` (21 runs, about 40 minutes on 2 CPU cores) and its `reweigh compare`; finished runs are skipped,
# so the script continues where it stopped. The reports land in runs/evidence/mixing-<setting>/compare/.
set -euo pipefail
cd "$(dirname "$0")/.."
reweigh=.venv/bin/reweigh
weights='mixing={policy: weights, interval: 25, lag: 8, temperature: 0.5, floor: 0.05, smoothing: 0.5}'
uniform_anchor='mixing={policy: weights, interval: 25, lag: 8, temperature: 0.5, floor: 0.05, smoothing: 0.5, anchor: uniform}'
arms=(--arms uniform,linupper --seeds 3
      --arm mix "$weights" algorithms.loss_reweighting=null
      --arm mix-linupper "$weights"
      --arm odm 'mixing={policy: odm, interval: 25, lag: 8}' algorithms.loss_reweighting=null
      --arm mix-uniform "$uniform_anchor" algorithms.loss_reweighting=null
      --arm mix-linupper-uniform "$uniform_anchor")

"$reweigh" sweep yamls/tiny-cpu.yaml eval_interval=50ba "${arms[@]}" --name mixnatural --out runs/evidence/mixing-natural
"$reweigh" sweep yamls/tiny-cpu.yaml eval_interval=50ba \
    'train_loader.dataset.proportions={code: 0.15, docs: 0.15, boilerplate: 0.7}' \
    "${arms[@]}" --name mix70 --out runs/evidence/mixing-boilerplate70

for setting in natural:mixnatural boilerplate70:mix70; do  # tokens to uniform's final loss, seed by seed
    .venv/bin/python scripts/steps_per_seed.py "runs/evidence/mixing-${setting%%:*}" "${setting#*:}" \
        --arms linupper,mix,mix-linupper,odm,mix-uniform,mix-linupper-uniform
done

mkdir -p docs/evidence
for setting in natural boilerplate70; do
    cp "runs/evidence/mixing-$setting/compare/curves.png" "docs/evidence/mixing-$setting-curves.png"
done
