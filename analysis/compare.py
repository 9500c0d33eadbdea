"""Did reweighting help? Runs grouped into arms, compared with a baseline per domain, beyond seed noise.

Pure functions over run folders read with :func:`~reweigh.analysis.runs.load_run`. Runs are grouped into
*arms* by their training config minus what only names, places or seeds a run (the schema's
:func:`~reweigh.train.schema.not_arm_keys`), or by names the caller gives; the seeds of an arm are averaged.
Against the baseline arm, each arm gets, per evaluation domain and for the mean over domains:

* the final validation loss and perplexity, mean and standard deviation over seeds;
* the *paired* difference to the baseline (same seed, same data order), its mean with a 95% Student-t
  confidence interval over seeds, and how many seeds agree in sign;
* *steps-to-baseline*: the first step at which the arm's mean validation loss reaches the baseline's final
  mean validation loss (linear interpolation between evaluations), and its ratio to the step at which the
  baseline itself first gets there: 0.8 means the arm needed 20% fewer steps;
* the weight statistics of the arm (mean effective sample size on reweighted steps, and each domain's share
  of the total weight against its share of the rows, from the loss histories).

This module imports neither torch nor Composer.

Example:
    >>> from reweigh.analysis.compare import paired_difference
    >>> d = paired_difference([5.40, 5.41, 5.38], [5.43, 5.44, 5.40])
    >>> round(d.mean, 4), d.n, d.better
    (-0.0267, 3, 3)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

from reweigh.analysis.runs import HISTORY_FOLDER, Run, mix_over_steps
from reweigh.train.schema import not_arm_keys

__all__ = [
    'MEAN_DOMAIN',
    'Arm',
    'Comparison',
    'Difference',
    'compare_runs',
    'group_arms',
    'paired_difference',
    'steps_to_reach',
    't_quantile',
]

MEAN_DOMAIN = '(mean)'
"""The row for the unweighted mean of the loss over evaluation domains (its perplexity: the exponential of that)."""

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (for a two-sided 95% interval).

    Exact to three decimals from a table up to 30 degrees of freedom; beyond, a Cornish-Fisher expansion
    around the normal quantile (error below 1e-4).

    Example:
        >>> from reweigh.analysis.compare import t_quantile
        >>> t_quantile(2), round(t_quantile(1000), 3)
        (4.303, 1.962)
    """
    if df < 1:
        raise ValueError(f'df must be >= 1, got {df}')
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


class Difference(NamedTuple):
    """A paired difference ``arm - baseline`` over seeds."""
    mean: float
    ci_low: float | None
    """Bounds of the 95% Student-t interval of the mean (``None`` with fewer than 2 pairs)."""
    ci_high: float | None
    n: int
    """Number of pairs (seeds both arms ran)."""
    better: int
    """Pairs in which the arm's value is lower than the baseline's."""


def paired_difference(arm: Sequence[float], baseline: Sequence[float]) -> Difference:
    """Mean, 95% confidence interval and sign agreement of ``arm[i] - baseline[i]``.

    Raises:
        ValueError: If the sequences differ in length or are empty.
    """
    if len(arm) != len(baseline) or not arm:
        raise ValueError(f'need equally many values, at least one; got {len(arm)} and {len(baseline)}')
    diffs = [a - b for a, b in zip(arm, baseline)]
    mean = statistics.fmean(diffs)
    low = high = None
    if len(diffs) >= 2:
        half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
    return Difference(mean, low, high, len(diffs), sum(d < 0 for d in diffs))


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> float | None:
    """The first step at which a loss curve reaches ``target``, interpolated linearly between evaluations.

    ``None`` if it never does. A curve already at or below ``target`` at its first evaluation gives that step.

    Example:
        >>> from reweigh.analysis.compare import steps_to_reach
        >>> steps_to_reach([100, 200, 300], [6.0, 5.0, 4.0], 4.5)
        250.0
    """
    previous = None
    for step, loss in zip(steps, losses):
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(step)
            (s0, l0) = previous
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        previous = (step, loss)
    return None


@dataclass
class Arm:
    """Runs that differ only in their seed."""
    name: str
    runs: list[Run]

    @property
    def seeds(self) -> list[Any]:
        return [(r.config or {}).get('seed') for r in self.runs]


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(value, Mapping):
        if not value and prefix:
            return {prefix: {}}
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    return {prefix: tuple(value) if isinstance(value, list) else value}


_NOT_ARM_KEYS = not_arm_keys()


def _ignored(key: str) -> bool:
    """Whether a config key (or a key under it) is one that does not make two runs different arms: names, places,
    seeds, logging, and settings that leave the arithmetic alone, as the schema declares them. A loader's
    ``dataset.local`` is ignored too when its ``remote`` is set (it is only the cache then, see :func:`_arm_key`);
    a local dataset's folder tells datasets apart."""
    return any(key == k or key.startswith(k + '.') for k in _NOT_ARM_KEYS)


def _arm_key(run: Run) -> tuple:
    flat = _flatten(run.config)
    caches = {f'{loader}.dataset.local' for loader in ('train_loader', 'eval_loader')
              if flat.get(f'{loader}.dataset.remote') is not None}
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if not _ignored(k) and k not in caches))


def _labels(keys: list[tuple]) -> list[str]:
    """Short names for arms from what differs between their configs: ``uniform``, ``linupper``, ``r=0.5``."""
    method, strategy = 'algorithms.loss_reweighting', 'algorithms.loss_reweighting.strategy'
    flat = [{k: v.strip("'") for k, v in key} for key in keys]

    def varying(among: list[dict[str, str]], keep) -> list[str]:
        return sorted(k for k in {k for f in among for k in f} if keep(k) and len({f.get(k) for f in among}) > 1)

    under_method = lambda k: k == method or k.startswith(method + '.')  # noqa: E731
    others = varying(flat, lambda k: not under_method(k))
    reweighted = [f for f in flat if strategy in f]
    settings = varying(reweighted, lambda k: under_method(k) and k != strategy)
    name_method = len(flat) == 1 or bool(varying(flat, under_method))
    labels = []
    for f in flat:
        parts = [f.get(strategy, 'uniform')] if name_method else []
        parts += [f'{k.rsplit(".", 1)[-1]}={f.get(k, "unset")}' for k in (settings if strategy in f else [])]
        parts += [f'{k.rsplit(".", 1)[-1]}={f.get(k, "unset")}' for k in others]
        labels.append(','.join(parts))
    if len(set(labels)) < len(labels):  # short names collide: spell the differing keys out in full
        every = varying(flat, lambda k: True)
        labels = [','.join(f'{k}={f.get(k, "unset")}' for k in every) for f in flat]
    return labels


def group_arms(runs: Sequence[Run], names: Mapping[str, str] | None = None) -> list[Arm]:
    """Group runs into arms: by ``names`` (run path to arm name) where given, else by config minus seed.

    Arms keep the order of their first run.

    Raises:
        ValueError: For a run with neither a name nor a ``config.yaml``, or two runs of one arm with the
            same seed.

    Example:
        >>> import pyarrow as pa
        >>> from reweigh.analysis.compare import group_arms
        >>> from reweigh.analysis.runs import Run
        >>> def run(path, seed, strategy):
        ...     lr = None if strategy is None else {'strategy': strategy}
        ...     config = {'seed': seed, 'run_name': path, 'algorithms': {'loss_reweighting': lr}}
        ...     return Run(path, path, config, pa.table({}), pa.table({}))
        >>> arms = group_arms([run('u1', 1, None), run('l1', 1, 'linupper'), run('u2', 2, None)])
        >>> [(a.name, [r.path for r in a.runs]) for a in arms]
        [('uniform', ['u1', 'u2']), ('linupper', ['l1'])]
    """
    names = dict(names or {})
    groups: dict[Any, list[Run]] = {}
    for run in runs:
        if run.path in names:
            key: Any = ('named', names[run.path])
        elif run.config is None:
            raise ValueError(f'{run.path} has no config.yaml to group it by; name its arm: ARM={run.path}')
        else:
            key = ('config', _arm_key(run))
        groups.setdefault(key, []).append(run)
    config_keys = [k[1] for k in groups if k[0] == 'config']
    labels = dict(zip(config_keys, _labels(config_keys))) if config_keys else {}
    arms = [Arm(k[1] if k[0] == 'named' else labels[k[1]], members) for k, members in groups.items()]
    arm_names = [a.name for a in arms]
    for name in arm_names:
        if arm_names.count(name) > 1:
            raise ValueError(f'two arms would both be called {name!r}; name the arms explicitly (ARM=RUN).')
    for arm in arms:
        seeds = [s for s in arm.seeds if s is not None]
        if len(set(seeds)) < len(seeds):
            twice = next(s for s in seeds if seeds.count(s) > 1)
            paths = [r.path for r in arm.runs if (r.config or {}).get('seed') == twice]
            raise ValueError(f'arm {arm.name!r} has two runs with seed {twice} ({", ".join(paths)}); '
                             'leave one out, or name their arms apart.')
    return arms


class Comparison(NamedTuple):
    """The tables of a comparison (pyarrow), ready to save or plot."""
    runs: pa.Table
    """Per run: ``arm``, ``run``, ``path``, ``seed``, ``final_step``."""
    curves: pa.Table
    """Per arm, domain and evaluation step: ``tokens``, ``seeds`` and the mean, std, min and max over seeds
    of ``loss`` and ``perplexity``."""
    differences: pa.Table
    """Per arm (but the baseline), domain and evaluation step: the paired loss difference to the baseline,
    ``diff_mean``, ``diff_min`` and ``diff_max`` over the ``pairs`` of seeds both ran."""
    final: pa.Table
    """Per arm and domain (and :data:`MEAN_DOMAIN`): final ``loss_mean``/``loss_std``,
    ``perplexity_mean``/``perplexity_std``, the paired difference to the baseline (``diff_mean``,
    ``diff_ci_low``, ``diff_ci_high``, ``pairs``, ``pairs_better``), ``steps_to_baseline`` and
    ``step_ratio``."""
    weights: pa.Table
    """Per arm and domain: ``weight_share``, ``row_share`` and ``mean_rel_weight`` on reweighted steps (means
    over seeds, from the histories; null without one), and the arm's mean ``ess`` on reweighted steps."""
    train: pa.Table
    """Per arm and training step: mean over seeds of the plain mean training loss (``mean_loss``, or the
    optimised ``loss`` for runs without reweighting statistics)."""
    baseline: str
    domains: list[str]
    mix: pa.Table | None = None
    """Per arm, mix update (``step``, ``first_step``) and domain: the online-mixing ``proportion``, mean over seeds
    (no rows where no arm mixed online)."""


def _domain_history_summary(run: Run) -> pa.Table | None:
    from reweigh.analysis.tables import analyze_history
    from reweigh.history.format import filesystem_for, list_parts

    folder = f'{run.path}/{HISTORY_FOLDER}'
    filesystem, root = filesystem_for(folder)
    if not list_parts(root, filesystem, recursive=True):
        return None
    return analyze_history(folder, windows=1, k=0, map_points=0).summary


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(present) if present else None


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def compare_runs(
    runs: Sequence[Run],
    baseline: str | None = None,
    names: Mapping[str, str] | None = None,
    domain_names: Sequence[str] = (),
    histories: bool = True,
) -> Comparison:
    """Compare runs, grouped into arms, with a baseline arm.

    Args:
        runs: Run folders read with :func:`~reweigh.analysis.runs.load_run`.
        baseline: The baseline arm's name. Default: the arm called ``uniform`` (training without
            reweighting), else the first arm.
        names: Run path to arm name, for runs not to be grouped by config (see :func:`group_arms`).
        domain_names: Domain names by index (the dataset manifest's), to name the domains of the loss
            histories (the evaluation domains are named already). Default: ``domain 0``, ``domain 1``, ...
        histories: Read the runs' loss histories for the weight statistics. Default: ``True``.

    Returns:
        Comparison: the tables.

    Raises:
        ValueError: For a run without evaluation metrics, runs evaluated on different domains, an arm whose
            runs ended at different steps, or an unknown ``baseline``.
    """
    if not runs:
        raise ValueError('no runs to compare.')
    domain_sets = {}
    for run in runs:
        if run.eval.num_rows == 0:
            raise ValueError(f'{run.path} has no evaluation metrics (was eval_interval longer than the run?).')
        if 'loss' not in run.eval.column_names:
            raise ValueError(f'{run.path} has no validation loss among its evaluation metrics.')
        domain_sets[run.path] = tuple(sorted(set(run.eval['domain'].to_pylist())))
    if len(set(domain_sets.values())) > 1:
        (p1, d1), (p2, d2) = list({d: (p, d) for p, d in domain_sets.items()}.values())[:2]
        raise ValueError(f'runs were evaluated on different domains: {p1} on {", ".join(d1)}; {p2} on {", ".join(d2)}.')
    first_eval = runs[0].eval['domain'].to_pylist()
    domains = list(dict.fromkeys(first_eval))
    arms = group_arms(runs, names)
    by_name = {a.name: a for a in arms}
    if baseline is None:
        baseline = 'uniform' if 'uniform' in by_name else arms[0].name
    if baseline not in by_name:
        raise ValueError(f'no arm is called {baseline!r}; the arms are: {", ".join(by_name)}.')
    arms = [by_name[baseline]] + [a for a in arms if a.name != baseline]  # the baseline first, in every table
    evaluations = {r.path: _evaluations(r, domains) for r in runs}  # (step, domain) -> row, once per run
    ends = {r.path: int(max(r.eval['step'].to_pylist())) for r in runs}
    for arm in arms:
        if len({ends[r.path] for r in arm.runs}) > 1:
            raise ValueError(f'arm {arm.name!r}: its runs were last evaluated at different steps '
                             f'({", ".join(f"{r.path}: {ends[r.path]}" for r in arm.runs)}); finish them, or leave the '
                             'short ones out.')

    curves = _curves(arms, evaluations)
    final_loss = {r.path: {d: _nan(evaluations[r.path][(ends[r.path], d)].get('loss')) for d in [*domains, MEAN_DOMAIN]}
                  for r in runs}
    final_rows = []
    base_arm = by_name[baseline]
    base_curve = _mean_curves(curves, baseline)
    for arm in arms:
        arm_curve = _mean_curves(curves, arm.name)
        for domain in [*domains, MEAN_DOMAIN]:
            losses = [final_loss[r.path][domain] for r in arm.runs]
            ppl = [evaluations[r.path][(ends[r.path], domain)].get('perplexity') for r in arm.runs]
            row: dict[str, Any] = {
                'arm': arm.name, 'domain': domain, 'seeds': len(losses),
                'loss_mean': statistics.fmean(losses), 'loss_std': _std(losses),
                'perplexity_mean': _mean(ppl), 'perplexity_std': _std([p for p in ppl if p is not None]),
            }
            common = [s for s in arm.seeds if s is not None and s in base_arm.seeds]
            if arm.name != baseline and common:
                mine = [losses[arm.seeds.index(s)] for s in common]
                theirs = [final_loss[base_arm.runs[base_arm.seeds.index(s)].path][domain] for s in common]
                d = paired_difference(mine, theirs)
                row.update(diff_mean=d.mean, diff_ci_low=d.ci_low, diff_ci_high=d.ci_high, pairs=d.n, pairs_better=d.better)
            else:
                row.update(diff_mean=None, diff_ci_low=None, diff_ci_high=None, pairs=None, pairs_better=None)
            target = base_curve[domain][1][-1]
            reached = steps_to_reach(*arm_curve[domain], target)
            base_reached = steps_to_reach(*base_curve[domain], target)
            row['steps_to_baseline'] = reached
            row['step_ratio'] = reached / base_reached if reached is not None and base_reached else None
            final_rows.append(row)

    return Comparison(
        runs=pa.Table.from_pylist([
            {'arm': a.name, 'run': r.name, 'path': r.path, 'seed': s, 'final_step': ends[r.path]}
            for a in arms for r, s in zip(a.runs, a.seeds)
        ], schema=pa.schema([('arm', pa.string()), ('run', pa.string()), ('path', pa.string()), ('seed', pa.int64()),
                             ('final_step', pa.int64())])),
        curves=curves,
        differences=_differences(arms, base_arm, evaluations),
        final=pa.Table.from_pylist(final_rows, schema=_FINAL_SCHEMA),
        weights=_weights(arms, domain_names, histories),
        train=_train_curves(arms),
        baseline=baseline,
        domains=domains,
        mix=_mix_curves(arms),
    )


_FINAL_SCHEMA = pa.schema([
    ('arm', pa.string()), ('domain', pa.string()), ('seeds', pa.int64()), ('loss_mean', pa.float64()),
    ('loss_std', pa.float64()), ('perplexity_mean', pa.float64()), ('perplexity_std', pa.float64()),
    ('diff_mean', pa.float64()), ('diff_ci_low', pa.float64()), ('diff_ci_high', pa.float64()),
    ('pairs', pa.int64()), ('pairs_better', pa.int64()), ('steps_to_baseline', pa.float64()), ('step_ratio', pa.float64()),
])


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _mean_row(final: dict[str, dict[str, Any]], domains: list[str]) -> dict[str, Any]:
    """The :data:`MEAN_DOMAIN` row of one evaluation: the mean loss over domains, and its exponential as the
    perplexity (the geometric mean of the domains' perplexities, so that it orders arms as the loss does)."""
    losses = [final[d].get('loss') for d in domains]
    mean = None if any(v is None for v in losses) else statistics.fmean(losses)
    return {'tokens': final[domains[0]]['tokens'], 'loss': _nan(mean), 'perplexity': None if mean is None else math.exp(mean)}


def _evaluations(run: Run, domains: list[str]) -> dict[tuple[int, str], dict[str, Any]]:
    """A run's evaluations by (step, domain), with :data:`MEAN_DOMAIN` where every domain was evaluated."""
    by_step: dict[int, dict[str, dict[str, Any]]] = {}
    for r in run.eval.to_pylist():
        by_step.setdefault(r['step'], {})[r['domain']] = r
    out = {}
    for step, final in by_step.items():
        out.update({(step, d): final[d] for d in domains if d in final})
        if all(d in final for d in domains):
            out[(step, MEAN_DOMAIN)] = _mean_row(final, domains)
    return out


def _by_domain_then_step(item: tuple[tuple[int, str], Any]) -> tuple[str, int]:
    return item[0][1], item[0][0]


def _curves(arms: list[Arm], evaluations: dict[str, dict[tuple[int, str], dict[str, Any]]]) -> pa.Table:
    rows = []
    for arm in arms:
        per_step: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for run in arm.runs:
            for key, value in evaluations[run.path].items():
                per_step.setdefault(key, []).append(value)
        for (step, domain), values in sorted(per_step.items(), key=_by_domain_then_step):
            if len(values) < len(arm.runs):  # a step not every seed evaluated
                continue
            row: dict[str, Any] = {'arm': arm.name, 'domain': domain, 'step': step, 'tokens': values[0].get('tokens'),
                                   'seeds': len(values)}
            for metric in ('loss', 'perplexity'):
                xs = [v.get(metric) for v in values if v.get(metric) is not None]
                row[f'{metric}_mean'] = statistics.fmean(xs) if xs else None
                row[f'{metric}_std'] = _std(xs)
                row[f'{metric}_min'] = min(xs) if xs else None
                row[f'{metric}_max'] = max(xs) if xs else None
            rows.append(row)
    schema = pa.schema([('arm', pa.string()), ('domain', pa.string()), ('step', pa.int64()), ('tokens', pa.int64()),
                        ('seeds', pa.int64())] + [(f'{m}_{s}', pa.float64()) for m in ('loss', 'perplexity')
                                                  for s in ('mean', 'std', 'min', 'max')])
    return pa.Table.from_pylist(rows, schema=schema)


def _differences(arms: list[Arm], baseline: Arm, evaluations: dict[str, dict[tuple[int, str], dict[str, Any]]]) -> pa.Table:
    """Per arm, domain and step: the paired loss difference to the baseline (mean, min, max over seeds)."""
    base = {s: evaluations[r.path] for s, r in zip(baseline.seeds, baseline.runs) if s is not None}
    rows = []
    for arm in arms:
        if arm is baseline:
            continue
        pairs = [(evaluations[r.path], base[s]) for s, r in zip(arm.seeds, arm.runs) if s in base]
        per_step: dict[tuple[int, str], list[float]] = {}
        for mine, theirs in pairs:
            for key in mine.keys() & theirs.keys():
                per_step.setdefault(key, []).append(mine[key]['loss'] - theirs[key]['loss'])
        rows += [{'arm': arm.name, 'domain': domain, 'step': step, 'pairs': len(d), 'diff_mean': statistics.fmean(d),
                  'diff_min': min(d), 'diff_max': max(d)}
                 for (step, domain), d in sorted(per_step.items(), key=_by_domain_then_step) if len(d) == len(pairs)]
    schema = pa.schema([('arm', pa.string()), ('domain', pa.string()), ('step', pa.int64()), ('pairs', pa.int64()),
                        ('diff_mean', pa.float64()), ('diff_min', pa.float64()), ('diff_max', pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _mean_curves(curves: pa.Table, arm: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in curves.to_pylist():
        if r['arm'] == arm:
            steps, losses = out.setdefault(r['domain'], ([], []))
            steps.append(r['step'])
            losses.append(r['loss_mean'])
    return out


def _weights(arms: list[Arm], domain_names: Sequence[str], histories: bool) -> pa.Table:
    rows = []
    for arm in arms:
        ess = []
        for run in arm.runs:
            t = run.train
            if 'loss_reweighting/ess' in t.column_names and 'loss_reweighting/active' in t.column_names:
                active = [e for e, a in zip(t['loss_reweighting/ess'].to_pylist(), t['loss_reweighting/active'].to_pylist())
                          if a and e is not None]
                if active:
                    ess.append(statistics.fmean(active))
        summaries = [s for s in (_domain_history_summary(r) for r in arm.runs) if s is not None] if histories else []
        per_domain: dict[int, dict[str, list[float]]] = {}
        for s in summaries:
            for r in s.to_pylist():
                d = per_domain.setdefault(r['domain'], {'weight_share': [], 'row_share': [], 'mean_rel_weight': []})
                for k in d:
                    if r[k] is not None:
                        d[k].append(r[k])
        for index in sorted(per_domain) or [None]:
            name = None if index is None else (domain_names[index] if 0 <= index < len(domain_names) else f'domain {index}')
            values = per_domain.get(index, {}) if index is not None else {}
            rows.append({
                'arm': arm.name, 'domain': name,
                'weight_share': _mean(values.get('weight_share', [])), 'row_share': _mean(values.get('row_share', [])),
                'mean_rel_weight': _mean(values.get('mean_rel_weight', [])), 'ess': _mean(ess),
            })
    schema = pa.schema([('arm', pa.string()), ('domain', pa.string()), ('weight_share', pa.float64()),
                        ('row_share', pa.float64()), ('mean_rel_weight', pa.float64()), ('ess', pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _mix_curves(arms: list[Arm]) -> pa.Table:
    rows = []
    for arm in arms:
        per_point: dict[tuple[int, int, str], list[float]] = {}
        for run in arm.runs:
            for r in mix_over_steps(run.train).to_pylist():
                per_point.setdefault((r['step'], r['first_step'], r['domain']), []).append(r['proportion'])
        rows += [{'arm': arm.name, 'step': s, 'first_step': f, 'domain': d, 'proportion': statistics.fmean(v),
                  'seeds': len(v)} for (s, f, d), v in per_point.items()]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ('arm', pa.string()), ('step', pa.int64()), ('first_step', pa.int64()), ('domain', pa.string()),
        ('proportion', pa.float64()), ('seeds', pa.int64())]))


def _train_curves(arms: list[Arm]) -> pa.Table:
    rows = []
    for arm in arms:
        per_step: dict[int, list[float]] = {}
        for run in arm.runs:
            t = run.train
            column = 'loss_reweighting/mean_loss' if 'loss_reweighting/mean_loss' in t.column_names else 'loss'
            if column not in t.column_names:
                continue
            for step, value in zip(t['step'].to_pylist(), t[column].to_pylist()):
                if value is not None:
                    per_step.setdefault(step, []).append(value)
        rows += [{'arm': arm.name, 'step': s, 'mean_loss': statistics.fmean(v), 'seeds': len(v)}
                 for s, v in sorted(per_step.items())]
    schema = pa.schema([('arm', pa.string()), ('step', pa.int64()), ('mean_loss', pa.float64()), ('seeds', pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)
