"""Render a :class:`~reweigh.analysis.compare.Comparison` as PNG curves, CSV/Parquet tables and ``report.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from reweigh.analysis.compare import MEAN_DOMAIN, Comparison
from reweigh.analysis.render import markdown_table, plt, save_figure, save_table
from reweigh.analysis.report import plot_mix

__all__ = ['verdict', 'write_comparison']


def verdict(row: dict[str, Any]) -> str:
    """In words, what a row of :attr:`Comparison.final` says about its arm against the baseline.

    Example:
        >>> from reweigh.analysis.compare_report import verdict
        >>> verdict({'diff_ci_low': -0.03, 'diff_ci_high': -0.01, 'pairs': 3, 'pairs_better': 3})
        'lower (better), beyond seed noise'
    """
    if row.get('pairs') is None:
        return 'baseline' if row.get('diff_mean') is None else '-'
    low, high = row.get('diff_ci_low'), row.get('diff_ci_high')
    if low is None:
        return 'one seed: no interval'
    if high < 0:
        return 'lower (better), beyond seed noise'
    if low > 0:
        return 'higher (worse), beyond seed noise'
    return 'within seed noise'


def _fmt(value: float | None, spec: str, signed: bool = False) -> str:
    if value is None:
        return '-'
    return format(value, ('+' if signed else '') + spec)


def _final_markdown(final: pa.Table) -> str:
    rows = []
    for r in final.to_pylist():
        ci = '-' if r['diff_ci_low'] is None else f"[{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]"
        rows.append({
            'arm': r['arm'], 'domain': r['domain'], 'seeds': r['seeds'],
            'val loss': f"{r['loss_mean']:.4f} ± {_fmt(r['loss_std'], '.4f')}",
            'perplexity': _fmt(r['perplexity_mean'], '.2f'),
            'Δ loss vs baseline': _fmt(r['diff_mean'], '.4f', signed=True), '95% CI': ci,
            'seeds better': '-' if r['pairs'] is None else f"{r['pairs_better']}/{r['pairs']}",
            'steps to baseline': _fmt(r['steps_to_baseline'], '.0f'), 'step ratio': _fmt(r['step_ratio'], '.3f'),
            'verdict': verdict(r),
        })
    columns = list(rows[0])
    return markdown_table(pa.Table.from_pylist(rows), columns)


def _plot_curves(comparison: Comparison, path: Path) -> None:
    domains = [*comparison.domains, MEAN_DOMAIN]
    arms = list(dict.fromkeys(comparison.runs['arm'].to_pylist()))
    colors = {arm: f'C{i}' for i, arm in enumerate(arms)}
    curves, differences = comparison.curves.to_pylist(), comparison.differences.to_pylist()
    fig, axes = plt.subplots(3, len(domains), figsize=(4 * len(domains), 10), squeeze=False)
    for row, metric in enumerate(('loss', 'perplexity')):
        for col, domain in enumerate(domains):
            ax = axes[row][col]
            for arm in arms:
                points = [c for c in curves if c['arm'] == arm and c['domain'] == domain and c[f'{metric}_mean'] is not None]
                if points:
                    steps = [p['step'] for p in points]
                    ax.plot(steps, [p[f'{metric}_mean'] for p in points], marker='.', color=colors[arm],
                            label=f'{arm} (n={points[0]["seeds"]})')
                    ax.fill_between(steps, [p[f'{metric}_min'] for p in points], [p[f'{metric}_max'] for p in points],
                                    color=colors[arm], alpha=0.2, lw=0)
            ax.set(title=f'{domain}: validation {metric}', xlabel='step', ylabel=metric)
            if metric == 'perplexity':
                ax.set_yscale('log')
    for col, domain in enumerate(domains):
        ax = axes[2][col]
        ax.axhline(0.0, color=colors[comparison.baseline], lw=1)
        for arm in arms:
            points = [d for d in differences if d['arm'] == arm and d['domain'] == domain]
            if points:
                steps = [p['step'] for p in points]
                ax.plot(steps, [p['diff_mean'] for p in points], marker='.', color=colors[arm], label=arm)
                ax.fill_between(steps, [p['diff_min'] for p in points], [p['diff_max'] for p in points],
                                color=colors[arm], alpha=0.2, lw=0)
        ax.set(title=f'{domain}: Δ loss vs {comparison.baseline} (paired)', xlabel='step', ylabel='Δ loss')
    axes[0][0].legend(fontsize=8, title='mean over seeds; band: min-max', title_fontsize=7)
    save_figure(fig, path)


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _plot_mix(comparison: Comparison, path: Path) -> None:
    mix = comparison.mix
    arms = [a for a in dict.fromkeys(comparison.runs['arm'].to_pylist()) if a in set(mix['arm'].to_pylist())]
    fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 3.8), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        plot_mix(ax, mix.filter(pc.equal(mix['arm'], arm)), title=f'{arm}: domain mix')
    save_figure(fig, path)


def _plot_train(comparison: Comparison, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    train = comparison.train.to_pylist()
    window = max(1, max(comparison.train['step'].to_pylist()) // 50)  # smoothed, so that the arms can be told apart
    for arm in dict.fromkeys(comparison.runs['arm'].to_pylist()):
        points = [t for t in train if t['arm'] == arm]
        if points:
            ax.plot([p['step'] for p in points], _running_mean([p['mean_loss'] for p in points], window), label=arm)
    ax.set(title=f'training loss (plain batch mean; running mean of {window} steps)', xlabel='step',
           ylabel='loss (nats/token)')
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_comparison(comparison: Comparison, out: str | Path, title: str = 'reweigh comparison',
                     command: Sequence[str] | None = None) -> Path:
    """Write the curves, the tables and ``report.md`` into ``out``; return the report's path.

    Args:
        comparison: From :func:`~reweigh.analysis.compare.compare_runs`.
        out: Output folder (created).
        title: The report's title.
        command: The command that made the comparison, quoted in the report.

    Example:
        >>> import tempfile
        >>> from reweigh.analysis.compare import compare_runs
        >>> from reweigh.analysis.compare_report import write_comparison
        >>> from reweigh.analysis.runs import Run, metrics_tables
        >>> def run(name, strategy, seed, loss):
        ...     lr = None if strategy == 'uniform' else {'strategy': strategy}
        ...     rows = [{'kind': 'eval', 'step': s, 'tokens': 8 * s, 'domain': 'code', 'loss': loss + 1 / s}
        ...             for s in (10, 20)]
        ...     train, ev = metrics_tables(rows)
        ...     return Run(name, name, {'seed': seed, 'algorithms': {'loss_reweighting': lr}}, train, ev)
        >>> runs = [run(f'{a}{s}', a, s, base + s / 100) for a, base in (('uniform', 5.0), ('linupper', 4.9))
        ...         for s in (1, 2, 3)]
        >>> report = write_comparison(compare_runs(runs, histories=False), tempfile.mkdtemp())
        >>> 'lower (better), beyond seed noise' in report.read_text()
        True
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mixed = comparison.mix is not None and comparison.mix.num_rows > 0
    for name in ('runs', 'curves', 'differences', 'final', 'weights', 'train', *(('mix',) if mixed else ())):
        save_table(getattr(comparison, name), out, name)
    if mixed:
        _plot_mix(comparison, out / 'mix.png')
    _plot_curves(comparison, out / 'curves.png')
    if comparison.train.num_rows:
        _plot_train(comparison, out / 'train_loss.png')
    runs = comparison.runs.to_pylist()
    arms = list(dict.fromkeys(r['arm'] for r in runs))
    lines = [f'# {title}', '']
    if command:
        lines += ['Made with:', '', '```', ' '.join(command), '```', '']
    lines += [f'Baseline: **{comparison.baseline}**. Validation loss is the mean token cross-entropy (nats) of each '
              f'domain\'s held-out split; `{MEAN_DOMAIN}` is the unweighted mean over domains (its perplexity the '
              'exponential of that mean). Δ is the arm minus the '
              'baseline on the same seed (same initialisation and data order), with a 95% Student-t interval over '
              'seeds; "steps to baseline" is the first step at which the arm\'s mean loss reaches the baseline\'s '
              'final mean loss (interpolated between evaluations), and "step ratio" that step over the step at which '
              'the baseline itself first reaches it (below 1: fewer steps).', '']
    lines += ['## Arms', '']
    for arm in arms:
        members = [r for r in runs if r['arm'] == arm]
        seeds = ', '.join(str(r['seed']) for r in members)
        lines.append(f'- **{arm}**: {len(members)} run(s), seeds {seeds}, {members[0]["final_step"]} steps '
                     f'({", ".join(r["run"] for r in members)})')
    lines += ['', '## Final validation loss', '', _final_markdown(comparison.final), '',
              '![validation curves](curves.png)', '']
    if comparison.train.num_rows:
        lines += ['![training loss](train_loss.png)', '']
    weights = comparison.weights
    if weights.num_rows:
        lines += ['## Weights', '', 'Each domain\'s share of the total weight against its share of the rows on '
                  'reweighted steps (from the loss histories; means over seeds), and the mean effective sample '
                  'size (1 = uniform).', '', markdown_table(
                      weights, ['arm', 'domain', 'weight_share', 'row_share', 'mean_rel_weight', 'ess'],
                      {'weight_share': '.3f', 'row_share': '.3f', 'mean_rel_weight': '.3f', 'ess': '.3f'}), '']
    if mixed:
        lines += ['## Domain mix', '', 'The stream\'s proportions over steps in the arms that mixed online (means over '
                  'seeds; a mix holds from the step it applies to until the next).', '', '![domain mix](mix.png)', '']
    lines += [f'Tables: `runs`, `final`, `curves`, `differences`, `weights`, `train`{", `mix`" if mixed else ""} '
              '(`.parquet` and `.csv`).', '']
    report = out / 'report.md'
    report.write_text('\n'.join(lines))
    return report
