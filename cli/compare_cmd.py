"""``reweigh compare RUN [RUN ...]``: did reweighting beat the baseline, per domain, beyond seed noise?"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

_NAMED = re.compile(r'^(?P<arm>[A-Za-z0-9_.+-]+)=(?P<path>.+)$')


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'compare',
        help='compare runs (arms x seeds) with a baseline: curves, table, steps-to-baseline',
        description='Group runs of `reweigh train` into arms (by config minus the seed, or as named: ARM=RUN), '
        'average their seeds, and compare each arm with the baseline per validation domain: final loss and '
        'perplexity (mean ± std), the paired difference with a 95%% interval over seeds, how many seeds agree, '
        'the step at which each arm reaches the baseline\'s final loss, and the weight statistics. Writes '
        'report.md, PNG curves and the tables (Parquet and CSV). RUN is a run folder or an object-store URI '
        'of one (s3://, gs://). Example: reweigh compare runs/sweep/* --out runs/sweep/compare',
    )
    p.add_argument('runs', nargs='+', metavar='RUN', help='run folder, or ARM=RUN to name its arm')
    p.add_argument('--baseline', nargs='+', metavar='RUN_OR_ARM',
                   help='the baseline: its runs (added to RUN if not there), or the name of an arm '
                   '(default: the arm without reweighting, "uniform")')
    p.add_argument('--out', default='comparison', help='output folder (default: ./comparison)')
    p.add_argument('--dataset', metavar='ROOT',
                   help="the prepared dataset the runs trained on, for domain names (default: the one the first run's "
                   'summary.json names, else the names the histories recorded); for runs whose dataset moved')
    p.add_argument('--no-histories', action='store_true',
                   help='skip the loss histories (no weight shares per domain; faster on large runs)')
    p.set_defaults(run=run)


def named_runs(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """Run paths, and the arm names given as ``ARM=RUN`` (a path that exists as written is a path)."""
    from reweigh.io.uri import is_remote

    paths, names = [], {}
    for item in items:
        match = _NAMED.match(item)
        if match and not is_remote(item) and not Path(item).exists():
            paths.append(match['path'].rstrip('/'))
            names[match['path'].rstrip('/')] = match['arm']
        else:
            paths.append(item.rstrip('/'))
    return paths, names


def _domain_names(run_paths: list[str], dataset: str | None = None) -> list[str]:
    """The domain names of ``dataset``, else of the dataset the runs trained on (the first summary.json that names one
    that can be read; one line says so when it cannot), else those a run's history recorded, or ``[]``.

    Raises:
        ValueError: If ``dataset`` is given and cannot be read.
    """
    import sys

    from reweigh.pipeline.manifest import read_manifest
    from reweigh.train.run_folder import RunFolder

    def names_of(root: str) -> list[str]:
        with tempfile.TemporaryDirectory() as cache:
            return list(read_manifest(root, cache).domain_names)

    if dataset is not None:
        try:
            return names_of(dataset)
        except (OSError, ValueError) as e:
            raise ValueError(f'--dataset {dataset}: {e}') from e
    noted = False
    for run_path in run_paths:
        named = None
        try:
            named = RunFolder(run_path).read_summary().get('dataset')
            if named:
                return names_of(named)
        except (OSError, ValueError) as e:  # the dataset moved or cannot be reached: try the next run
            if named and not noted:
                print(f'reweigh compare: note: cannot read the dataset {named} that {run_path} names ({e}); domain '
                      'names come from elsewhere (pass --dataset ROOT)', file=sys.stderr)
                noted = True
    from reweigh.history.format import read_metadata

    for run_path in run_paths:  # no dataset: the names the runs' loaders recorded in their histories
        try:
            names = read_metadata(RunFolder(run_path).history).get('domains')
        except OSError:
            continue
        if names:
            return list(names)
    return []  # domains stay numbered


def run(args: argparse.Namespace) -> int:
    from reweigh.analysis.compare import compare_runs, group_arms
    from reweigh.analysis.compare_report import verdict, write_comparison
    from reweigh.analysis.runs import load_run

    paths, names = named_runs(args.runs)
    baseline_arm = None
    baseline_paths: list[str] = []
    for item in args.baseline or []:
        if Path(item).exists() or '://' in item or _NAMED.match(item):
            more, more_names = named_runs([item])
            baseline_paths += more
            names.update(more_names)
        elif len(args.baseline) == 1:
            baseline_arm = item
        else:
            raise ValueError(f'--baseline: {item!r} is neither a run folder nor, alone, an arm name.')
    paths += [p for p in baseline_paths if p not in paths]
    runs = []
    for path in dict.fromkeys(paths):
        try:
            runs.append(load_run(path))
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        except OSError as e:  # a store that cannot be reached, or refuses the credentials
            raise ValueError(f'cannot read {path}: {e}') from e
    if baseline_paths:
        arms = group_arms(runs, names)
        owners = {a.name for a in arms for r in a.runs if r.path in baseline_paths}
        if len(owners) != 1:
            raise ValueError(f'--baseline runs belong to {len(owners)} arms ({", ".join(sorted(owners))}); '
                             'give the runs of one arm.')
        baseline_arm = owners.pop()
    comparison = compare_runs(runs, baseline_arm, names, domain_names=_domain_names([r.path for r in runs], args.dataset),
                              histories=not args.no_histories)
    command = ['reweigh', 'compare', *args.runs, *(['--baseline', *args.baseline] if args.baseline else []),
               '--out', args.out, *(['--no-histories'] if args.no_histories else [])]
    report = write_comparison(comparison, args.out, command=command)
    arms = list(dict.fromkeys(comparison.runs['arm'].to_pylist()))
    n = comparison.runs.num_rows
    print(f'reweigh compare: {n} run{"s" * (n != 1)} in {len(arms)} arm{"s" * (len(arms) != 1)} ({", ".join(arms)}); '
          f'baseline {comparison.baseline}')
    for row in comparison.final.to_pylist():
        if row['arm'] == comparison.baseline:
            continue
        ratio = '' if row['step_ratio'] is None else f', step ratio {row["step_ratio"]:.2f}'
        diff = '' if row['diff_mean'] is None else f' Δ {row["diff_mean"]:+.4f}'
        print(f'  {row["arm"]:>12} {row["domain"]:>12}: {row["loss_mean"]:.4f}{diff} ({verdict(row)}{ratio})')
    print(f'  report: {report}')
    return 0
