"""The run-folder format: what ``reweigh train`` leaves in a run folder, and the metrics file it appends to.

One definition for the writer (:class:`~reweigh.callbacks.MetricsLog`, ``reweigh train``) and every reader
(``reweigh compare``, ``reweigh sweep``, notebooks). A run folder, local or in an object store (the parent of
a remote ``save_folder``), holds::

    runs/tiny-cpu/config.yaml      # the resolved training config (written when training starts)
    runs/tiny-cpu/metrics.jsonl    # evaluation and training metrics over time (appended while training)
    runs/tiny-cpu/summary.json     # paths and the final evaluation (written when training finishes)
    runs/tiny-cpu/history/         # the per-sample loss history (reweigh.history.format)

``metrics.jsonl`` holds one JSON object per line, flat, so that ``pandas.read_json(path, lines=True)``,
DuckDB's ``read_json`` and Polars' ``read_ndjson`` open it as it is:

* ``{"kind": "eval", "step": 250, "tokens": 512000, "domain": "code", "loss": 5.41, "perplexity": 223.7}``:
  one evaluation of one domain (evaluator label ``val/code`` gives domain ``code``) after ``step`` training
  batches and ``tokens`` training tokens; ``loss`` is the mean token cross-entropy, ``perplexity`` its
  exponential; other metrics keep their Composer name.
* ``{"kind": "train", "step": 12, "tokens": 24576, "loss": 5.93, "loss_reweighting/ess": 0.91, ...}``: the
  ``step``-th training batch (1-based, so ``step`` counts the batches done, as for ``eval``): ``loss`` is the
  loss that was optimised (the weighted loss once reweighting is on), ``loss_reweighting/mean_loss`` the plain
  mean of the per-sample losses, and the other ``loss_reweighting/*`` statistics of
  :class:`~reweigh.algorithms.LossReweighting`. With online mixing (:class:`~reweigh.callbacks.OnlineMixing`), the
  line of step ``s`` also holds the mix decided after ``s`` steps: ``mixing/update`` (its number),
  ``mixing/first_step`` (the first step it applies to), ``mixing/proportion/<domain>`` and
  ``mixing/passes/<domain>`` (the domain's finished passes); the starting mix is on a line of step 0.

A step may have several lines of a kind (metrics that reach the logger late on a GPU come in a line of their
own); readers merge them, later values winning. Non-finite values are written as ``null``. A resumed run first
drops the lines past the step it resumes from, so after any number of kills and restarts every step appears
once. This module imports neither torch nor Composer.

Example:
    >>> from reweigh.analysis.runs import metrics_line, parse_metrics
    >>> line = metrics_line('eval', step=250, tokens=512000, values={'loss': 5.41}, domain='code')
    >>> line
    '{"kind": "eval", "step": 250, "tokens": 512000, "domain": "code", "loss": 5.41}'
    >>> parse_metrics(line + '\\n')[0]['loss']
    5.41
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from reweigh.io.arrow import read_text
from reweigh.io.local import write_atomically

__all__ = [
    'CONFIG_FILE',
    'EVAL_METRICS',
    'HISTORY_FOLDER',
    'METRICS_FILE',
    'SUMMARY_FILE',
    'Run',
    'eval_domain',
    'load_run',
    'metrics_line',
    'metrics_tables',
    'mix_over_steps',
    'parse_metrics',
    'truncate_metrics',
]

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.yaml'
SUMMARY_FILE = 'summary.json'
HISTORY_FOLDER = 'history'

EVAL_METRICS = {'LanguageCrossEntropy': 'loss', 'LanguagePerplexity': 'perplexity'}
"""Composer metric class names and the column each is written as in ``metrics.jsonl``."""

_KINDS = ('train', 'eval')


def eval_domain(label: str) -> str:
    """The domain an evaluator label stands for: ``val/code`` -> ``code``; a label without ``/`` is itself.

    Example:
        >>> from reweigh.analysis.runs import eval_domain
        >>> eval_domain('val/code'), eval_domain('eval')
        ('code', 'eval')
    """
    return label.split('/', 1)[1] if '/' in label else label


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_line(kind: str, step: int, tokens: int | None, values: dict[str, float], domain: str | None = None) -> str:
    """One line of ``metrics.jsonl`` (without the newline); the only place its layout is written.

    Args:
        kind: ``'train'`` or ``'eval'``.
        step: Training batches done (for ``train``: this batch's 1-based number).
        tokens: Training tokens done, or ``None`` if unknown.
        values: Metric name to value; non-finite values become ``null``.
        domain: The evaluated domain (``eval`` lines only).

    Raises:
        ValueError: For an unknown ``kind``, or a metric name that collides with a key of the layout.
    """
    if kind not in _KINDS:
        raise ValueError(f'kind must be one of {_KINDS}, got {kind!r}')
    row: dict[str, Any] = {'kind': kind, 'step': int(step), 'tokens': None if tokens is None else int(tokens)}
    if kind == 'eval':
        row['domain'] = domain
    for name, value in values.items():
        if name in row:
            raise ValueError(f'metric name {name!r} collides with the key of the same name')
        row[name] = _finite_or_none(value)
    return json.dumps(row)


def parse_metrics(text: str, source: str = 'metrics') -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` text; a malformed line (a write cut short by a kill) is skipped.

    A malformed line other than the last warns, naming ``source``.

    Example:
        >>> from reweigh.analysis.runs import parse_metrics
        >>> [r['step'] for r in parse_metrics('{"kind": "train", "step": 1, "tokens": 8}\\n{"kind": "tr')]
        [1]
    """
    rows, lines = [], text.split('\n')
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not (isinstance(row, dict) and row.get('kind') in _KINDS and isinstance(row.get('step'), int)):
                raise ValueError('not a metrics row')
        except ValueError:
            if number < len(lines) - (lines[-1] == ''):
                warnings.warn(f'{source}: line {number} is not a metrics row and is skipped.', stacklevel=2)
            continue
        rows.append(row)
    return rows


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the lines of the local ``metrics.jsonl`` at ``path`` with ``step <= step`` (when a run resumes).

    The file is rewritten atomically; a line cut short by a kill is dropped. A missing file is left missing.

    Returns:
        int: The number of lines dropped.

    Example:
        >>> import os, tempfile
        >>> from reweigh.analysis.runs import metrics_line, truncate_metrics
        >>> path = os.path.join(tempfile.mkdtemp(), 'metrics.jsonl')
        >>> with open(path, 'w') as f:
        ...     _ = f.write(''.join(metrics_line('train', s, 8 * s, {'loss': 1.0}) + '\\n' for s in (1, 2, 3)))
        >>> truncate_metrics(path, 2), len(open(path).read().splitlines())
        (1, 2)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        text = f.read()
    total = sum(1 for line in text.split('\n') if line.strip())
    keep = [row for row in parse_metrics(text, path) if row['step'] <= step]
    write_atomically(path, ''.join(json.dumps(row) + '\n' for row in keep))
    return total - len(keep)


def metrics_tables(rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """``(train, eval)`` tables of metrics rows, one row per step (and domain), sorted, later lines winning.

    ``train`` has ``step``, ``tokens`` and one column per metric; ``eval`` also ``domain``.

    Example:
        >>> from reweigh.analysis.runs import metrics_tables
        >>> rows = [{'kind': 'train', 'step': 1, 'tokens': 8, 'loss': 2.0},
        ...         {'kind': 'train', 'step': 1, 'tokens': 8, 'loss_reweighting/ess': 0.9}]
        >>> metrics_tables(rows)[0].to_pylist()
        [{'step': 1, 'tokens': 8, 'loss': 2.0, 'loss_reweighting/ess': 0.9}]
    """
    tables = []
    for kind in _KINDS:
        merged: dict[tuple, dict[str, Any]] = {}
        for row in rows:
            if row['kind'] == kind:
                key = (row['step'], row.get('domain'))
                merged.setdefault(key, {}).update({k: v for k, v in row.items() if k != 'kind'})
        columns = ['step', 'tokens'] + (['domain'] if kind == 'eval' else [])
        columns += sorted({k for r in merged.values() for k in r} - set(columns))
        ordered = [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1] or ''))]
        if kind == 'train':
            for r in ordered:
                r.pop('domain', None)
        tables.append(pa.Table.from_pylist(ordered, schema=_schema(columns)))
    return tables[0], tables[1]


def _schema(columns: list[str]) -> pa.Schema:
    types = {'step': pa.int64(), 'tokens': pa.int64(), 'domain': pa.string()}
    return pa.schema([(c, types.get(c, pa.float64())) for c in columns])


MIX_PREFIX = 'mixing/proportion/'
"""Online mixing's proportion of each domain in a ``train`` line (``mixing/proportion/<domain>``)."""


def mix_over_steps(train: pa.Table) -> pa.Table:
    """The domain mix of every online-mixing update in a run's training metrics: ``step`` (the steps done when it
    was decided; 0 for the starting mix), ``first_step`` (the first step it applies to), ``domain`` and
    ``proportion``; empty for a run without online mixing.

    Example:
        >>> import pyarrow as pa
        >>> from reweigh.analysis.runs import mix_over_steps
        >>> train = pa.table({'step': [0, 1, 2], 'mixing/first_step': [0.0, None, 3.0],
        ...                   'mixing/proportion/code': [0.5, None, 0.6], 'mixing/proportion/web': [0.5, None, 0.4]})
        >>> [(r['step'], r['domain'], r['proportion']) for r in mix_over_steps(train).to_pylist()][-2:]
        [(2, 'code', 0.6), (2, 'web', 0.4)]
    """
    columns = [c for c in train.column_names if c.startswith(MIX_PREFIX)]
    rows = []
    if columns and 'mixing/first_step' in train.column_names:
        table = train.select(['step', 'mixing/first_step', *columns]).to_pylist()
        for r in table:
            if r['mixing/first_step'] is None:
                continue
            rows += [{'step': r['step'], 'first_step': int(r['mixing/first_step']), 'domain': c[len(MIX_PREFIX):],
                      'proportion': r[c]} for c in columns if r[c] is not None]
    return pa.Table.from_pylist(rows, schema=pa.schema([('step', pa.int64()), ('first_step', pa.int64()),
                                                        ('domain', pa.string()), ('proportion', pa.float64())]))


@dataclass
class Run:
    """A run folder as the readers see it."""
    path: str
    """The folder (local path or URI)."""
    name: str
    """The run name (from ``config.yaml``; else the folder's name)."""
    config: dict[str, Any] | None
    """The resolved training config, or ``None`` for a folder without ``config.yaml``."""
    train: pa.Table
    """Training metrics per step (see :func:`metrics_tables`)."""
    eval: pa.Table
    """Evaluation metrics per step and domain."""


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder's config and metrics (local or ``s3://``/``gs://``).

    Raises:
        FileNotFoundError: If the folder has no ``metrics.jsonl``.
        ValueError: If its ``config.yaml`` is not a YAML mapping.

    Example:
        >>> import tempfile
        >>> from reweigh.analysis.runs import load_run
        >>> load_run(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... has no metrics.jsonl: not a reweigh run folder, or trained before metrics were recorded.
    """
    import yaml

    path = os.fspath(path).rstrip('/')
    text = read_text(f'{path}/{METRICS_FILE}', missing_ok=True)
    if text is None:
        raise FileNotFoundError(f'{path} has no {METRICS_FILE}: not a reweigh run folder, or trained before metrics '
                                'were recorded.')
    config_text = read_text(f'{path}/{CONFIG_FILE}', missing_ok=True)
    config = None
    if config_text is not None:
        config = yaml.safe_load(config_text)
        if not isinstance(config, dict):
            raise ValueError(f'{path}/{CONFIG_FILE} is not a YAML mapping.')
    name = (config or {}).get('run_name') or os.path.basename(path)
    train, evaluation = metrics_tables(parse_metrics(text, f'{path}/{METRICS_FILE}'))
    return Run(path, str(name), config, train, evaluation)
