"""The report of a curation: what each domain kept and dropped, examples of dropped text, the rules on the data map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from reweigh.analysis.curation import Selection
from reweigh.analysis.render import markdown_table, plt, save_figure, save_table

__all__ = ['write_curation_report']


_MAP_POINTS = 20_000


def _plot_map(samples: pa.Table, selection: Selection, path: Path) -> None:
    if samples.num_rows > _MAP_POINTS:  # an evenly spaced subset: a scatter of millions of points says no more
        samples = samples.take(np.linspace(0, samples.num_rows - 1, _MAP_POINTS).astype(np.int64))
    s = samples.select(['sample_id', 'mean_loss', 'loss_std']).to_pydict()
    dropped = [selection.reason(sid) is not None for sid in s['sample_id']]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for flag, color, label in ((False, 'tab:blue', 'kept'), (True, 'tab:red', 'dropped')):
        xs = [x for x, d in zip(s['loss_std'], dropped) if d == flag]
        ys = [y for y, d in zip(s['mean_loss'], dropped) if d == flag]
        ax.scatter(xs, ys, s=8, alpha=0.6, color=color, label=f'{label} ({len(xs):,})')
    if 'easy_stable_loss' in selection.thresholds:
        ax.axhline(selection.thresholds['easy_stable_loss'], color='grey', ls='--', lw=1)
        ax.axvline(selection.thresholds['easy_stable_std'], color='grey', ls='--', lw=1, label='easy-and-stable corner')
    subset = '' if len(dropped) < _MAP_POINTS else f' ({_MAP_POINTS:,} shown)'
    ax.set(title=f'data map of the visited samples{subset}', xlabel='loss std across visits', ylabel='mean loss')
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_curation_report(
    out: str | Path,
    kept: dict[str, dict[str, int]],
    dropped: dict[str, dict[str, int]],
    selection: Selection,
    samples: pa.Table,
    domain_names: Sequence[str],
    text_of: Callable[[list[int]], list[str]] | None = None,
    examples: dict[str, list[int]] | None = None,
    title: str = 'reweigh curation',
    per_domain: int = 3,
) -> Path:
    """Write ``report.md``, ``data_map.png`` and ``curation.csv``/``.parquet`` into ``out``; return the report.

    Args:
        out: Output folder (created).
        kept: Per domain, ``samples`` and ``tokens`` kept.
        dropped: Per domain, ``samples`` and ``tokens`` dropped.
        selection: What :func:`~reweigh.analysis.curation.select` decided.
        samples: The per-sample table the rules ran on.
        domain_names: Domain names by index.
        text_of: Maps sample ids to their text, for the examples.
        examples: Per domain, dropped sample ids to show.
        title: The report's title.
        per_domain: Examples per domain.

    Example:
        >>> import tempfile
        >>> import pyarrow as pa
        >>> from reweigh.analysis.curation import Rules, select
        >>> from reweigh.analysis.curation_report import write_curation_report
        >>> samples = pa.table({'sample_id': [1, 2], 'domain': [0, 0], 'visits': [2, 2], 'active_visits': [2, 2],
        ...                     'mean_loss': [0.1, 2.0], 'loss_std': [0.0, 0.3], 'mean_rel_weight': [0.2, 1.8]})
        >>> selection = select(samples, Rules(drop_below=0.5))
        >>> report = write_curation_report(tempfile.mkdtemp(), {'code': {'samples': 1, 'tokens': 9}},
        ...                                {'code': {'samples': 1, 'tokens': 9}}, selection, samples, ['code'])
        >>> '| code | 1 | 9 | 1 | 9 | 0.500 |' in report.read_text()
        True
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in domain_names:
        k, d = kept.get(name, {'samples': 0, 'tokens': 0}), dropped.get(name, {'samples': 0, 'tokens': 0})
        total = k['samples'] + d['samples']
        rows.append({'domain': name, 'kept_samples': k['samples'], 'kept_tokens': k['tokens'],
                     'dropped_samples': d['samples'], 'dropped_tokens': d['tokens'],
                     'dropped_share': d['samples'] / total if total else 0.0})
    table = pa.Table.from_pylist(rows)
    save_table(table, out, 'curation')
    _plot_map(samples, selection, out / 'data_map.png')
    reasons = selection.reason_counts()
    lines = [f'# {title}', '', markdown_table(
        table, list(table.column_names), {'dropped_share': '.3f'}), '', '## Why samples were dropped', '']
    lines += [f'- {reason}: {count:,}' for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])] \
        or ['- nothing dropped']
    if selection.drop_unvisited:
        lines.append('- never visited by the run: dropped (--drop-unvisited)')
    lines += ['', '![data map: kept and dropped samples](data_map.png)', '']
    if text_of is not None and examples:
        lines += ['## Examples of dropped text', '']
        for name in domain_names:
            ids = (examples.get(name) or [])[:per_domain]
            for sid, text in zip(ids, text_of(ids) if ids else []):
                snippet = ' '.join(text.split())[:160].replace('|', '\\|')
                lines.append(f'- `{name}` {sid} ({selection.reason(sid) or "never visited"}): {snippet}')
        lines.append('')
    report = out / 'report.md'
    report.write_text('\n'.join(lines))
    return report
