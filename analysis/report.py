"""Render an :class:`~reweigh.analysis.Analysis` as PNG plots, CSV/Parquet tables and a Markdown report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from reweigh.analysis.render import markdown_table, plt, save_figure, save_table
from reweigh.analysis.tables import Analysis, most_deprioritised_domain

__all__ = ['plot_mix', 'write_report']


def _name(domain_names: Sequence[str], d: int) -> str:
    return domain_names[d] if 0 <= d < len(domain_names) else f'domain {d}'


def _plot_domains(analysis: Analysis, names: Sequence[str], path: Path) -> None:
    t = analysis.domain_over_time.to_pydict()
    fig, (ax_w, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for d in sorted(set(t['domain'])):
        idx = [i for i, x in enumerate(t['domain']) if x == d]
        steps = [t['window'][i] for i in idx]
        ax_w.plot(steps, [t['mean_rel_weight'][i] for i in idx], marker='o', label=_name(names, d))
        ax_l.plot(steps, [t['mean_loss'][i] for i in idx], marker='o', label=_name(names, d))
    if analysis.first_active_step is not None:
        for ax in (ax_w, ax_l):
            ax.axvline(analysis.first_active_step, color='grey', ls='--', lw=1, label='reweighting starts')
    ax_w.axhline(1.0, color='black', lw=0.5)
    ax_w.set(title='mean weight relative to uniform', xlabel='step (window start)', ylabel='weight x batch size')
    ax_l.set(title='mean per-sample loss', xlabel='step (window start)', ylabel='loss (nats/token)')
    ax_w.legend(fontsize=8)
    save_figure(fig, path)


def plot_mix(ax: Any, mix: pa.Table, title: str = 'domain mix (online mixing)') -> None:
    """Each domain's proportion of the stream over steps (from :func:`~reweigh.analysis.runs.mix_over_steps`), as a
    step plot: a mix holds from its ``first_step`` until the next one's."""
    rows = mix.to_pylist()
    for domain in dict.fromkeys(r['domain'] for r in rows):
        points = [r for r in rows if r['domain'] == domain]
        ax.step([p['first_step'] for p in points], [p['proportion'] for p in points], where='post', marker='.',
                label=domain)
    ax.set_title(title, fontsize=9)
    ax.set(xlabel='step', ylabel='proportion of the stream', ylim=(0, 1))
    ax.legend(fontsize=8)


def _plot_quantiles(analysis: Analysis, path: Path) -> None:
    q = analysis.weight_quantiles.to_pydict()
    fig, ax = plt.subplots(figsize=(6, 4))
    cols = [c for c in q if c.startswith('q')]
    for c in cols:
        ax.plot(q['window'], q[c], marker='.', label=c.replace('q', 'p'))
    ax.axhline(1.0, color='black', lw=0.5)
    ax.set(title='distribution of relative weights per step window', xlabel='step (window start)', ylabel='weight x batch size')
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_data_map(analysis: Analysis, path: Path) -> None:
    s = analysis.data_map.to_pydict()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    color = [1.0 if c is None else c for c in s['mean_rel_weight']]
    sc = ax.scatter(s['loss_std'], s['mean_loss'], c=color, cmap='coolwarm', s=8, alpha=0.8)
    fig.colorbar(sc, ax=ax, label='mean relative weight (reweighted steps)')
    sampled = '' if analysis.samples is not None and analysis.samples.num_rows == len(color) else f' ({len(color):,} sampled)'
    ax.set(title=f'data map: one dot per sample{sampled}', xlabel='loss std across visits', ylabel='mean loss')
    save_figure(fig, path)


def _mix_section(mix: pa.Table | None, out: Path) -> list[str]:
    """The report's lines on the domain mix (none for a run without online mixing), and its plot ``mix.png``."""
    if mix is None or mix.num_rows == 0:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    plot_mix(ax, mix)
    save_figure(fig, out / 'mix.png')
    save_table(mix, out, 'mix')
    last = max(mix['step'].to_pylist())
    final = [r for r in mix.to_pylist() if r['step'] == last]
    text = ', '.join(f'{r["domain"]} {r["proportion"]:.3f}' for r in final)
    updates = len(set(mix['step'].to_pylist())) - 1
    return ['## Domain mix', '', f'Online mixing changed the stream\'s proportions {updates} times; the last mix '
            f'(decided after step {last}): {text}.', '', '![domain mix over steps](mix.png)', '']


def write_report(
    analysis: Analysis,
    out: str | Path,
    domain_names: Sequence[str] = (),
    text_of: Callable[[list[int]], list[str]] | None = None,
    title: str = 'reweigh loss-history report',
    k: int = 10,
    mix: pa.Table | None = None,
) -> Path:
    """Write plots, tables and ``report.md`` into ``out``; return the report's path.

    Args:
        analysis (Analysis): From :func:`~reweigh.analysis.analyze_history`.
        out (str | Path): Output folder (created).
        domain_names (Sequence[str]): Names by domain index.
        text_of (Callable, optional): Maps sample ids to their text, for snippets.
        title (str): Report title.
        k (int): How many most-deprioritised / most-emphasised samples to list.
        mix (pa.Table, optional): The run's domain mix over steps (:func:`~reweigh.analysis.runs.mix_over_steps`),
            plotted when it has rows.

    Example:
        >>> import tempfile
        >>> import pyarrow as pa
        >>> from reweigh.analysis import analyze_history, write_report
        >>> t = pa.table({'step': [0, 0, 1, 1], 'microbatch': [0] * 4, 'rank': [0] * 4,
        ...               'sample_id': [1, 2, 1, 2], 'domain': [0, 1, 0, 1], 'tokens': [9] * 4,
        ...               'loss': [1.0, 3.0, 0.5, 3.0], 'weight': [0.5, 0.5, 0.25, 0.75],
        ...               'r': [1.0] * 4, 'active': [False, False, True, True]})
        >>> report = write_report(analyze_history(t), tempfile.mkdtemp(), domain_names=['code', 'web'])
        >>> 'Most deprioritised domain: code' in report.read_text()
        True
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = analysis.summary.append_column(
        'domain_name', pa.array([_name(domain_names, d) for d in analysis.summary['domain'].to_pylist()]),
    )
    save_table(summary, out, 'domain_summary')
    save_table(analysis.domain_over_time, out, 'domain_over_time')
    save_table(analysis.weight_quantiles, out, 'weight_quantiles')
    if analysis.samples is not None:  # else analyze_history wrote samples.parquet itself
        save_table(analysis.samples, out, 'samples')
    _plot_domains(analysis, domain_names, out / 'domains_over_time.png')
    _plot_quantiles(analysis, out / 'weight_distribution.png')
    _plot_data_map(analysis, out / 'data_map.png')

    lines = [f'# {title}', '']
    lines.append(
        f'{analysis.rows:,} rows over {analysis.steps} steps; reweighting active from step '
        f'{analysis.first_active_step if analysis.first_active_step is not None else "never (uniform run)"}.',
    )
    missing = analysis.missing_text()
    if missing is not None:
        lines += ['', f'**Incomplete history:** {missing}. These rows are not in any table below.']
    worst = most_deprioritised_domain(analysis.summary)
    if worst is not None:
        row = summary.filter(pc.equal(summary['domain'], worst)).to_pylist()[0]
        lines += ['', f'**Most deprioritised domain: {_name(domain_names, worst)}** (mean weight '
                  f'{row["mean_rel_weight"]:.3f} x uniform after warm-up; {row["weight_share"]:.1%} of the weight '
                  f'for {row["row_share"]:.1%} of the rows).']
    cols = ['domain_name', 'rows', 'samples', 'mean_loss']
    fmts = {'mean_loss': '.4f', 'mean_rel_weight': '.4f', 'mean_loss_reweighted': '.4f',
            'weight_share': '.3f', 'row_share': '.3f'}
    if analysis.first_active_step is not None:
        cols += ['mean_loss_reweighted', 'mean_rel_weight', 'weight_share', 'row_share']
    lines += ['', '## Domains', '', markdown_table(summary, cols, fmts), '',
              '![per-domain weight and loss](domains_over_time.png)', '',
              *_mix_section(mix, out),
              '## Weight distribution', '', '![weights per window](weight_distribution.png)', '',
              '## Data map', '', 'Each sample\'s mean loss against its loss variability across visits, coloured '
              'by its mean weight.', '', '![data map](data_map.png)']
    for heading, table in (('Most deprioritised samples', analysis.deprioritised.slice(0, k)),
                           ('Most emphasised samples', analysis.emphasised.slice(0, k))):
        if table.num_rows == 0:
            continue
        ids = table['sample_id'].to_pylist()
        texts = text_of(ids) if text_of is not None else [''] * len(ids)
        snippets = [' '.join(t.split())[:100].replace('|', '\\|') for t in texts]
        table = table.append_column('domain_name', pa.array([_name(domain_names, d) for d in table['domain'].to_pylist()]))
        table = table.append_column('text', pa.array(snippets))
        lines += ['', f'## {heading}', '', markdown_table(
            table, ['sample_id', 'domain_name', 'visits', 'mean_loss', 'mean_rel_weight', 'text'],
            {'mean_loss': '.3f', 'mean_rel_weight': '.3f'},
        )]
    csv = '`.parquet` and `.csv`' if analysis.samples is not None else '`.parquet`; `samples` as `.parquet` only'
    lines += ['', f'Tables: `domain_summary`, `domain_over_time`, `weight_quantiles`, `samples` ({csv}).', '']
    report = out / 'report.md'
    report.write_text('\n'.join(lines))
    return report
