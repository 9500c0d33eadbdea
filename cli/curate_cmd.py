"""``reweigh curate RUN``: from a run's loss history to the next dataset, or the next domain mix."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'curate',
        help='turn a run\'s loss history into a curated dataset or the next domain proportions',
        description='From the loss history of a reweighted run: write a curated copy of the dataset it trained on '
        '(--out, with rules: --drop-below, --drop-easy-stable, --keep-top, --cap, --drop-unvisited; validation '
        'splits, tokenizer and sample ids unchanged), and/or derive domain mixing proportions (--proportions: '
        'q_d ∝ p_d * (s_d / p_d) ** (1 / T), s_d the domain\'s share of the weight and p_d of the rows after '
        'warm-up, floored). RUN is a run folder, a history folder or an object-store URI of one. '
        'Examples: reweigh curate runs/tiny-cpu --out data/curated --drop-below 0.5 --min-visits 2; '
        'reweigh curate runs/tiny-cpu --proportions --floor 0.05',
    )
    p.add_argument('target', metavar='RUN_DIR_OR_URI')
    p.add_argument('--out', metavar='DIR_OR_URI', help='write the curated dataset here (local folder, s3://, gs://)')
    p.add_argument('--overwrite', action='store_true', help='replace what --out holds')
    p.add_argument('--engine', choices=('local', 'spark'), default='local',
                   help='local: this process (default); spark: Spark executors copy the shards (needs reweigh[spark])')
    p.add_argument('--spark-master', metavar='URL', help='Spark master for --engine spark (default: local[*])')
    rules = p.add_argument_group('rules (applied in this order)')
    rules.add_argument('--drop-below', type=float, metavar='W',
                       help='drop samples whose mean weight after warm-up is below W x uniform ...')
    rules.add_argument('--min-visits', type=int, default=1, metavar='K',
                       help='... over at least K reweighted visits (default: 1)')
    rules.add_argument('--drop-easy-stable', type=float, metavar='Q',
                       help='drop the data map\'s easy and stable corner: samples in the lowest Q quantile of both mean '
                       'loss and loss std across visits')
    rules.add_argument('--keep-top', type=float, metavar='F', help='then keep the top fraction F of each domain by --score')
    rules.add_argument('--score', default='weight', choices=('weight', 'loss'),
                       help='mean relative weight or mean loss (default: weight)')
    rules.add_argument('--cap', action='append', default=[], metavar='DOMAIN=N',
                       help='keep at most N samples of DOMAIN, the highest by --score (repeatable)')
    rules.add_argument('--drop-unvisited', action='store_true', help='also drop samples the run never saw (default: keep)')
    p.add_argument('--report', metavar='DIR', help='curation report folder (default: RUN/curation, or ./curation for a URI)')
    p.add_argument('--proportions', action='store_true', help='print and write domain proportions for the next run')
    p.add_argument('--temperature', type=float, default=1.0, help='T > 0 for --proportions (default: 1)')
    p.add_argument('--floor', type=float, default=0.01, help='least proportion of any domain (default: 0.01)')
    p.add_argument('--proportions-out', metavar='FILE',
                   help='YAML snippet to write (default: RUN/proportions.yaml, or ./proportions.yaml for a URI)')
    p.add_argument('--dataset', help='the prepared dataset the run trained on (default: the one in RUN/summary.json)')
    p.add_argument('--dataset-cache', help='local cache folder for a remote --dataset')
    p.set_defaults(run=run, extra='composer')  # reweigh.integrations.extras


def _caps(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        name, _, count = item.partition('=')
        try:
            caps[name] = int(count)
        except ValueError:
            raise ValueError(f'--cap {item!r}: write DOMAIN=N, e.g. --cap boilerplate=500') from None
    return caps


def _default_folder(target: str, name: str) -> Path:
    from reweigh.io.uri import is_remote

    return Path(name) if is_remote(target) else Path(target) / name


def run(args: argparse.Namespace) -> int:
    from reweigh.analysis import analyze_history
    from reweigh.analysis.curation import Rules
    from reweigh.train.run_folder import RunFolder

    if not args.out and not args.proportions:
        raise ValueError('nothing to do: give --out DIR (a curated dataset) and/or --proportions.')
    rules = Rules(args.drop_below, args.min_visits, args.drop_easy_stable, args.keep_top, args.score,
                  _caps(args.cap), args.drop_unvisited)
    history, summary = RunFolder(args.target).locate_history()
    dataset = args.dataset or summary.get('dataset')
    if not dataset:
        raise ValueError(f'cannot tell which dataset {args.target} trained on; name it with --dataset ROOT.')
    with tempfile.TemporaryDirectory(prefix='reweigh-curate-') as tmp:
        cache = args.dataset_cache or summary.get('dataset_cache') or os.path.join(tmp, 'dataset')
        try:
            from reweigh.pipeline.manifest import read_manifest

            manifest = read_manifest(dataset, cache)
            if args.out:
                rules.check(manifest.domain_names)
            analysis = analyze_history(history, windows=1, k=0, map_points=0)  # with the per-sample table
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        except OSError as e:  # the store cannot be reached, or refuses the credentials
            raise ValueError(f'cannot read {history} or {dataset}: {e}') from e
        if args.proportions:
            _proportions(args, analysis, manifest.domain_names, dataset)
        if args.out:
            _check_history(analysis.samples, manifest, dataset)
            _curate(args, rules, analysis, dataset, cache, manifest)
    return 0


def _check_history(samples: Any, manifest: Any, dataset: str) -> None:
    """The history's sample ids must be training samples of ``dataset``, in the domains it says."""
    import numpy as np

    from reweigh.pipeline.ids import decode_sample_ids

    ids = samples['sample_id'].to_numpy()
    if (ids < 0).any():
        raise ValueError('the history has rows without sample ids (-1): the run did not train on a reweigh dataset, '
                         'so its samples cannot be found again.')
    domain, split, index = decode_sample_ids(ids)
    sizes = np.zeros(max(len(manifest.domains), int(domain.max(initial=0)) + 1), dtype=np.int64)
    for d in manifest.domains:
        sizes[d.index] = d.sequences.get('train', 0)
    bad = (domain != samples['domain'].to_numpy()) | (split != 0) | (index >= sizes[domain])
    if bad.any():
        raise ValueError(f'the history\'s sample ids do not match {dataset} (e.g. {int(ids[bad][0])}): is it the '
                         'dataset the run trained on? Pass --dataset ROOT.')


def _proportions(args: argparse.Namespace, analysis: Any, names: list[str], dataset: str) -> None:
    import yaml

    from reweigh.analysis.proportions import domain_proportions

    proportions = domain_proportions(analysis.summary, args.temperature, args.floor)
    if max(proportions) >= len(names):
        raise ValueError(f'the history has domain {max(proportions)} but {dataset} has {len(names)} domains: '
                         'is it the dataset the run trained on? Pass --dataset ROOT.')
    named = {names[d]: round(q, 4) for d, q in sorted(proportions.items())}
    out = Path(args.proportions_out) if args.proportions_out else _default_folder(args.target, 'proportions.yaml')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f'# reweigh curate {args.target} --proportions --temperature {args.temperature} --floor {args.floor}\n'
                   + yaml.safe_dump({'train_loader': {'dataset': {'proportions': named}}}, sort_keys=False))
    print(f'reweigh curate: domain proportions from {analysis.rows:,} history rows (T = {args.temperature}, '
          f'floor {args.floor})')
    print(f'  {"domain":>16} {"rows":>7} {"weight":>7} {"proposed":>9}')
    for row in analysis.summary.to_pylist():
        if row['domain'] in proportions:
            print(f'  {names[row["domain"]]:>16} {row["row_share"]:>7.3f} {row["weight_share"]:>7.3f} '
                  f'{proportions[row["domain"]]:>9.3f}')
    flow = ', '.join(f'{k}: {v}' for k, v in named.items())
    print(f"  written to {out}; as an override: 'train_loader.dataset.proportions={{{flow}}}'")


def _curate(args: argparse.Namespace, rules: Any, analysis: Any, dataset: str, cache: str, manifest: Any) -> None:
    from reweigh.analysis.curation import select
    from reweigh.analysis.curation_report import write_curation_report
    from reweigh.pipeline import SampleLookup
    from reweigh.pipeline.curate import curate_dataset

    selection = select(analysis.samples, rules, manifest.domain_names)
    record = {'source_run': args.target, 'rules': rules.record(), 'history_rows': analysis.rows,
              'thresholds': selection.thresholds}
    result = curate_dataset(dataset, args.out, selection.keeps, record, cache=cache, overwrite=args.overwrite,
                            engine=args.engine, spark_master=args.spark_master)
    lookup = SampleLookup(dataset, cache)
    report = write_curation_report(
        args.report or _default_folder(args.target, 'curation'), result.kept, result.dropped, selection,
        analysis.samples, manifest.domain_names, text_of=lambda ids: [lookup.text(i) for i in ids],
        examples=result.dropped_ids, title=f'reweigh curation: {args.target} -> {args.out}',
    )
    kept = sum(k['samples'] for k in result.kept.values())
    total = kept + sum(d['samples'] for d in result.dropped.values())
    print(f'reweigh curate: kept {kept:,} of {total:,} training samples in {args.out} '
          f'({result.seconds:.2f} s, {result.samples_per_s:,.0f} samples/s)')
    for name in manifest.domain_names:
        k, d = result.kept[name], result.dropped[name]
        print(f'  {name:>16}: kept {k["samples"]:>7,} samples ({k["tokens"]:,} tokens), dropped {d["samples"]:,}')
    print(f'  report: {report}')
