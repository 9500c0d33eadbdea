"""Per seed: the fraction of the baseline's steps an arm needs to reach the baseline's final validation loss.

For each arm, domain and seed: the first step at which the arm's run reaches the final validation loss of the
baseline's run with the same seed (``reweigh.analysis.compare.steps_to_reach``: interpolated between evaluations),
over the baseline run's last step. ``reweigh compare`` reports the same for the means over seeds; this gives each
seed, for claims that must hold on every seed (docs/evidence.md).

Example:
    python scripts/steps_per_seed.py runs/evidence/mixing-natural mixnatural --arms linupper,mix,odm
"""

from __future__ import annotations

import argparse

from reweigh.analysis.compare import steps_to_reach
from reweigh.analysis.runs import load_run


def _curve(path: str, domain: str) -> list[dict]:
    return [r for r in load_run(path).eval.to_pylist() if r['domain'] == domain]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', help='the sweep\'s folder (its runs are PREFIX-ARM-sSEED)')
    parser.add_argument('prefix', help='the sweep\'s --name')
    parser.add_argument('--arms', required=True, help='comma-separated arms')
    parser.add_argument('--baseline', default='uniform')
    parser.add_argument('--seeds', default='17,18,19')
    parser.add_argument('--domains', default='code,docs,boilerplate')
    args = parser.parse_args()
    seeds = args.seeds.split(',')
    print(f'| arm | domain | {" | ".join(f"seed {s}" for s in seeds)} |')
    print('|---|---|' + '---|' * len(seeds))
    for domain in args.domains.split(','):
        for arm in args.arms.split(','):
            cells = []
            for seed in seeds:
                base = _curve(f'{args.folder}/{args.prefix}-{args.baseline}-s{seed}', domain)
                run = _curve(f'{args.folder}/{args.prefix}-{arm}-s{seed}', domain)
                step = steps_to_reach([r['step'] for r in run], [r['loss'] for r in run], base[-1]['loss'])
                cells.append('not reached' if step is None else f'{step / base[-1]["step"]:.2f}')
            print(f'| {arm} | {domain} | {" | ".join(cells)} |')


if __name__ == '__main__':
    main()
