"""Analysis as a library: the loss history (format, DuckDB aggregations, report) and run comparison.

It needs neither torch nor Composer nor Streaming, so a notebook or a CPU box can analyse a run's history
and compare runs (local or on an object store) without the training stack. ``reweigh analyze`` and
``reweigh compare`` are thin CLIs over it.

Example:
    >>> import pyarrow as pa
    >>> from reweigh.analysis import HISTORY_SCHEMA, analyze_history, most_deprioritised_domain
    >>> rows = {'step': [0, 0], 'microbatch': [0, 0], 'rank': [0, 0], 'sample_id': [7, 8], 'domain': [0, 1],
    ...         'tokens': [5, 5], 'mix': [-1, -1], 'loss': [0.2, 4.0], 'weight': [0.1, 0.9], 'r': [1.0, 1.0],
    ...         'active': [True, True]}
    >>> analysis = analyze_history(pa.table(rows, schema=HISTORY_SCHEMA))
    >>> most_deprioritised_domain(analysis.summary)
    0
"""

import importlib
from typing import Any

from reweigh.analysis.compare import Comparison, compare_runs
from reweigh.analysis.runs import Run, load_run
from reweigh.analysis.tables import Analysis, analyze_history, load_history, most_deprioritised_domain
from reweigh.history.format import HISTORY_SCHEMA, list_parts, truncate_history

__all__ = [
    'HISTORY_SCHEMA',
    'Analysis',
    'Comparison',
    'Run',
    'analyze_history',
    'compare_runs',
    'list_parts',
    'load_history',
    'load_run',
    'most_deprioritised_domain',
    'truncate_history',
    'write_comparison',
    'write_report',
]

_LAZY = {'write_report': 'reweigh.analysis.report', 'write_comparison': 'reweigh.analysis.compare_report'}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # imported on first use: they bring matplotlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
