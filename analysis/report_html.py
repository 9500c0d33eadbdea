"""``report.html``: the figures of ``report.md`` made interactive, in one self-contained file to share.

The page inlines plotly.js from the installed ``plotly`` package (this module needs ``reweigh[explore]``), so it
opens offline and loads nothing from a CDN. It holds the domain summary, the domains' weight and loss over
training, the weight's quantiles per window, the domain mix (for a run that mixed online), a sampled data map whose
points show their text on hover, and the most deprioritised and emphasised samples.

Example:
    >>> import tempfile
    >>> import pyarrow as pa
    >>> from reweigh.analysis import analyze_history
    >>> from reweigh.analysis.report_html import write_html_report
    >>> t = pa.table({'step': [0, 0, 1, 1], 'microbatch': [0] * 4, 'rank': [0] * 4,
    ...               'sample_id': [1, 2, 1, 2], 'domain': [0, 1, 0, 1], 'tokens': [9] * 4,
    ...               'loss': [1.0, 3.0, 0.5, 3.0], 'weight': [0.5, 0.5, 0.25, 0.75],
    ...               'r': [1.0] * 4, 'active': [False, False, True, True]})
    >>> page = write_html_report(analyze_history(t), tempfile.mkdtemp(), ['code', 'web']).read_text()
    >>> '<script src=' in page, page.count('class="plotly-graph-div"')  # nothing loaded from elsewhere
    (False, 3)
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import pyarrow as pa
from plotly.subplots import make_subplots

from reweigh.analysis.tables import Analysis

__all__ = ['HTML_MAP_POINTS', 'write_html_report']

HTML_MAP_POINTS = 2000
"""Samples in report.html's data map (each carries a text snippet for its hover)."""
SNIPPET = 200


def _name(names: Sequence[str], d: int) -> str:
    return names[d] if 0 <= d < len(names) else f'domain {d}'


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f'{value:.4g}'
        return html.escape('-' if value is None else str(value))
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in columns)
    body = ''.join('<tr>' + ''.join(f'<td>{cell(r.get(c))}</td>' for c in columns) + '</tr>' for r in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figures(analysis: Analysis, names: Sequence[str], text_of: Callable[[list[int]], list[str]] | None,
             mix: pa.Table | None, map_points: int) -> list[tuple[str, object]]:
    figures = []
    over = analysis.domain_over_time.to_pylist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=('mean weight relative to uniform', 'mean per-sample loss'))
    for d in sorted({r['domain'] for r in over}):
        rows = [r for r in over if r['domain'] == d]
        steps = [r['window'] for r in rows]
        fig.add_trace(go.Scatter(x=steps, y=[r['mean_rel_weight'] for r in rows], name=_name(names, d),
                                 legendgroup=str(d), mode='lines+markers'), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[r['mean_loss'] for r in rows], name=_name(names, d), legendgroup=str(d),
                                 showlegend=False, mode='lines+markers'), row=1, col=2)
    fig.update_xaxes(title_text='step (window start)')
    figures.append(('Domains over training', fig))

    q = analysis.weight_quantiles.to_pydict()
    fig = go.Figure([go.Scatter(x=q['window'], y=q[c], name=c.replace('q', 'p'), mode='lines+markers')
                     for c in q if c.startswith('q')])
    fig.update_layout(xaxis_title='step (window start)', yaxis_title='weight x batch size')
    figures.append(('Distribution of the relative weights per step window', fig))

    if mix is not None and mix.num_rows:
        rows = mix.to_pylist()
        fig = go.Figure([go.Scatter(x=[r['first_step'] for r in rows if r['domain'] == d],
                                    y=[r['proportion'] for r in rows if r['domain'] == d], name=d, line_shape='hv')
                         for d in dict.fromkeys(r['domain'] for r in rows)])
        fig.update_layout(xaxis_title='step', yaxis_title='proportion of the stream', yaxis_range=[0, 1])
        figures.append(('Domain mix (online mixing)', fig))

    points = analysis.data_map.to_pylist()
    points = points[::max(1, -(-len(points) // map_points))][:map_points]
    if points:
        ids = [p['sample_id'] for p in points]
        texts = text_of(ids) if text_of is not None else [None] * len(ids)
        fig = go.Figure()
        for d in sorted({p['domain'] for p in points}):
            mine = [(p, t) for p, t in zip(points, texts) if p['domain'] == d]
            hover = [f"sample {p['sample_id']}<br>mean loss {p['mean_loss']:.3f}<br>weight "
                     f"{'-' if p['mean_rel_weight'] is None else format(p['mean_rel_weight'], '.3f')}"
                     + ('' if t is None else '<br>' + html.escape(t[:SNIPPET]).replace('\n', '<br>')) for p, t in mine]
            fig.add_trace(go.Scatter(x=[p['loss_std'] for p, _ in mine], y=[p['mean_loss'] for p, _ in mine],
                                     mode='markers', name=_name(names, d), text=hover, hoverinfo='text',
                                     marker={'size': 6, 'opacity': 0.75}))
        fig.update_layout(xaxis_title='loss std across visits', yaxis_title='mean loss', height=560)
        figures.append((f'Data map: {len(points):,} sampled samples (hover for their text)', fig))
    return figures


def write_html_report(
    analysis: Analysis,
    out: str | Path,
    domain_names: Sequence[str] = (),
    text_of: Callable[[list[int]], list[str]] | None = None,
    title: str = 'reweigh loss-history report',
    mix: pa.Table | None = None,
    map_points: int = HTML_MAP_POINTS,
) -> Path:
    """Write ``out/report.html`` (see the module docstring) and return its path.

    Args:
        analysis (Analysis): From :func:`~reweigh.analysis.analyze_history`.
        out (str | Path): Output folder (created).
        domain_names (Sequence[str]): Names by domain index.
        text_of (Callable, optional): Maps sample ids to their text, for the data map's hovers and the tables.
        title (str): The page's title.
        mix (pa.Table, optional): The run's domain mix over steps, plotted when it has rows.
        map_points (int): Samples in the data map. Default: :data:`HTML_MAP_POINTS`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plotly_js = (Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js').read_text(encoding='utf-8')
    summary = [dict(r, name=_name(domain_names, r['domain'])) for r in analysis.summary.to_pylist()]
    body = [f'<h1>{html.escape(title)}</h1>',
            f'<p>{analysis.rows:,} history rows over {analysis.steps:,} steps; reweighting from step '
            f'{"-" if analysis.first_active_step is None else analysis.first_active_step}.</p>',
            '<h2>Domains</h2>',
            _table(summary, ['name', 'rows', 'samples', 'mean_loss', 'mean_rel_weight', 'weight_share', 'row_share'])]
    for heading, fig in _figures(analysis, domain_names, text_of, mix, map_points):
        fig.update_layout(margin={'l': 50, 'r': 20, 't': 40, 'b': 40}, template='plotly_white')
        body += [f'<h2>{html.escape(heading)}</h2>', pio.to_html(fig, include_plotlyjs=False, full_html=False)]
    extremes = (('Most deprioritised samples', analysis.deprioritised), ('Most emphasised samples', analysis.emphasised))
    columns = ['sample_id', 'domain', 'visits', 'mean_loss', 'loss_std', 'mean_rel_weight'] + (['text'] if text_of else [])
    for heading, table in extremes:
        rows = table.to_pylist()
        if rows:
            if text_of is not None:
                for row, text in zip(rows, text_of([r['sample_id'] for r in rows])):
                    row['text'] = text[:SNIPPET]
            body += [f'<h2>{heading}</h2>', _table(rows, columns)]
    page = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><script>{plotly_js}</script><style>'
            'body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}'
            'table{border-collapse:collapse;font-size:.9em}td,th{border-bottom:1px solid #ddd;padding:.2em .6em;'
            'text-align:left;vertical-align:top}</style></head><body>' + '\n'.join(body) + '</body></html>')
    path = out / 'report.html'
    path.write_text(page, encoding='utf-8')
    return path
