"""What every report of :mod:`reweigh.analysis` writes the same way: tables as Parquet and CSV, Markdown
tables, PNG figures (matplotlib with the Agg backend, so no display is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

__all__ = ['markdown_table', 'plt', 'save_figure', 'save_table']


def save_table(table: pa.Table, out: Path, stem: str) -> None:
    """Write ``table`` as ``out/stem.parquet`` and ``out/stem.csv``."""
    pq.write_table(table, out / f'{stem}.parquet', compression='zstd')
    pacsv.write_csv(table, out / f'{stem}.csv')


def markdown_table(table: pa.Table, columns: Sequence[str], formats: dict[str, str] | None = None) -> str:
    """``columns`` of ``table`` as a Markdown table, each cell formatted with ``formats[column]`` (``-`` for null).

    Example:
        >>> import pyarrow as pa
        >>> from reweigh.analysis.render import markdown_table
        >>> print(markdown_table(pa.table({'arm': ['a'], 'loss': [1.23456]}), ['arm', 'loss'], {'loss': '.2f'}))
        | arm | loss |
        |---|---|
        | a | 1.23 |
    """
    formats = formats or {}
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in table.select(list(columns)).to_pylist():
        cells = []
        for c in columns:
            v = row[c]
            cells.append('-' if v is None else (format(v, formats[c]) if c in formats else str(v)))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Lay out, save as PNG and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
