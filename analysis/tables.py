"""Tables that answer "which samples and domains did training deprioritise, and when?".

Pure functions over a loss history (see :mod:`reweigh.history.format`). The aggregation runs in DuckDB
over the Parquet parts where they are (local files natively, object stores through pyarrow), in a
bounded amount of memory that spills to disk, so a 100M-row history of a large run fits in a few GiB.
Weights are reported *relative to uniform*: ``rel_weight = weight * n``, where ``n`` is the number of
samples the weight was normalised over (one step's microbatch across all ranks), so 1.0 means "counted
like in plain training", 0.5 "half as much".
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from reweigh.history.format import HISTORY_SCHEMA, Part, filesystem_for, list_parts, part_rows

__all__ = ['EXACT_QUANTILE_ROWS', 'Analysis', 'MissingPart', 'analyze_history', 'load_history', 'most_deprioritised_domain',
           'register_history']

EXACT_QUANTILE_ROWS = 10_000_000
"""Up to this many history rows the weight quantiles are exact; beyond, they are those of a seeded uniform
sample of about this many rows (exact quantiles hold every value in memory)."""


class _Parts(NamedTuple):
    files: list[Part]
    filesystem: pafs.FileSystem


class MissingPart(NamedTuple):
    """A history part that could not be read (its Parquet footer is gone: a full disk, a cut-short copy)."""
    path: str
    first_step: int
    last_step: int
    rows: int | None
    """About how many rows it held: its steps times the rows per step of the readable parts (``None``: none are)."""

    def describe(self) -> str:
        """``'PATH (steps 90-99, about 80 rows)'``."""
        rows = '' if self.rows is None else f', about {self.rows:,} rows'
        return f'{self.path} (steps {self.first_step}-{self.last_step}{rows})'


def _find_parts(path: str | os.PathLike) -> _Parts:
    filesystem, root = filesystem_for(path)
    files = list_parts(root, filesystem, recursive=True)
    if not files:
        raise FileNotFoundError(f'no loss-history part files under {str(path)!r}.')
    return _Parts(files, filesystem)


def _readable(parts: _Parts) -> tuple[_Parts, tuple[MissingPart, ...]]:
    """The parts whose footer reads, and those that do not, with an estimate of the rows they held."""
    rows = {part: part_rows(part.path, parts.filesystem) for part in parts.files}
    good = [part for part in parts.files if rows[part] is not None]
    spanned = sum(part.last - part.first + 1 for part in good)
    per_step = sum(rows[part] for part in good) / spanned if spanned else None
    missing = tuple(
        MissingPart(part.path, part.first, part.last,
                    None if per_step is None else round(per_step * (part.last - part.first + 1)))
        for part in parts.files if rows[part] is None
    )
    return parts._replace(files=good), missing


def load_history(path: str | os.PathLike) -> pa.Table:
    """Read every readable part under ``path`` (a local folder or ``s3://``/``gs://`` URI) into one table.

    For histories that fit in memory; :func:`analyze_history` takes the path itself and does not load it.
    Unreadable parts (a full disk, an older writer) are skipped with a warning naming them.

    Raises:
        FileNotFoundError: If ``path`` holds no part files.
    """
    parts, missing = _readable(_find_parts(path))
    if missing:
        warnings.warn(f'loss history: {_missing_text(missing)}', stacklevel=2)
    return pads.dataset([p.path for p in parts.files], schema=HISTORY_SCHEMA, format='parquet',
                        filesystem=parts.filesystem).to_table()


def _missing_text(missing: tuple[MissingPart, ...]) -> str:
    return f'{len(missing)} unreadable part(s) skipped: ' + '; '.join(m.describe() for m in missing)


class Analysis(NamedTuple):
    """The analysis tables (pyarrow), ready to save or plot."""
    summary: pa.Table
    """Per domain: rows, samples, mean loss; on reweighted steps: mean loss, mean relative weight, share
    of the total weight and share of the rows (null for a run that never reweighted)."""
    domain_over_time: pa.Table
    """Per step window and domain: mean loss and mean relative weight."""
    weight_quantiles: pa.Table
    """Per step window: quantiles of the relative weight over reweighted rows (of a uniform sample beyond
    :data:`EXACT_QUANTILE_ROWS` rows)."""
    deprioritised: pa.Table
    """The ``k`` samples with the lowest mean relative weight (reweighted rows), lowest first."""
    emphasised: pa.Table
    """The ``k`` samples with the highest mean relative weight, highest first."""
    data_map: pa.Table
    """Up to ``map_points`` samples (a pseudo-random subset, the same on every run) with their per-sample
    columns, for a plot."""
    samples: pa.Table | None
    """Per sample: visits, mean and std of the loss across visits, domain, mean relative weight and number of
    visits on reweighted steps (``active_visits``); ``None`` when it was written to ``samples_to`` instead of
    being held in memory."""
    rows: int
    steps: int
    first_active_step: int | None
    missing: tuple[MissingPart, ...] = ()
    """The parts that could not be read and were left out (:meth:`MissingPart.describe` names each)."""

    def missing_text(self) -> str | None:
        """One line naming the unreadable parts left out, their steps and about how many rows; ``None`` if none."""
        return _missing_text(self.missing) if self.missing else None


def analyze_history(
    history: str | os.PathLike | pa.Table,
    windows: int = 10,
    quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
    k: int = 10,
    samples_to: str | os.PathLike | None = None,
    map_points: int = 20_000,
    memory_limit: str = '3GB',
) -> Analysis:
    """Aggregate a loss history into the tables of :class:`Analysis` with DuckDB.

    Args:
        history: A history folder or URI (read in place), or a table with the history schema.
        windows: Number of equal step windows for the over-time tables. Default: ``10``.
        quantiles: Quantiles of the relative weight per window.
        k: How many most deprioritised / emphasised samples to return. Default: ``10``.
        samples_to: Write the per-sample table to this local Parquet file instead of returning it
            (a run of 100M rows has tens of millions of samples). Default: return it.
        map_points: Samples in :attr:`Analysis.data_map`. Default: ``20_000``.
        memory_limit: DuckDB's memory limit; beyond it, work spills to a temporary folder. Default: ``'3GB'``.

    Returns:
        Analysis: the tables.

    Raises:
        FileNotFoundError: If a ``history`` folder holds no part files.
        ValueError: If the history is empty.

    Example:
        >>> import pyarrow as pa
        >>> from reweigh.analysis import analyze_history
        >>> t = pa.table({'step': [0, 0, 1, 1], 'microbatch': [0] * 4, 'rank': [0] * 4,
        ...               'sample_id': [1, 2, 1, 2], 'domain': [0, 1, 0, 1], 'tokens': [9] * 4,
        ...               'loss': [1.0, 3.0, 0.5, 3.0], 'weight': [0.5, 0.5, 0.25, 0.75],
        ...               'r': [1.0] * 4, 'active': [False, False, True, True]})
        >>> a = analyze_history(t)
        >>> a.summary.column('mean_rel_weight').to_pylist(), a.deprioritised['sample_id'].to_pylist()
        ([0.5, 1.5], [1, 2])
    """
    import duckdb

    with tempfile.TemporaryDirectory(prefix='reweigh-analyze-') as spill:
        # A database file rather than an in-memory one, so that the loaded history can leave memory too.
        con = duckdb.connect(os.path.join(spill, 'history.duckdb'), config={
            'memory_limit': memory_limit, 'temp_directory': spill, 'preserve_insertion_order': False,
        })
        try:
            missing = _load(con, history)
            return _aggregate(con, windows, quantiles, k, samples_to, map_points)._replace(missing=missing)
        finally:
            con.close()


def _load(con, history: str | os.PathLike | pa.Table) -> tuple[MissingPart, ...]:
    """Create the table ``h``: the columns the analysis needs, with ``rel_weight``, in one pass over the parts;
    return the unreadable parts left out."""
    if isinstance(history, pa.Table):
        con.register('history', history)
        _materialize(con)
        return ()
    return _register_readable(con, history, lambda: _materialize(con))


def _register_readable(con, history: str | os.PathLike, read: Callable[[], Any]) -> tuple[MissingPart, ...]:
    """Register the parts of ``history`` as the view ``history`` and ``read`` it; where a part cannot be read,
    register and read the readable ones instead and return the others."""
    import duckdb

    parts = _find_parts(history)
    try:
        _register(con, parts)
        read()
        return ()
    except (duckdb.Error, pa.ArrowException, OSError):  # an unreadable part: leave it out, read the rest
        parts, missing = _readable(parts)
        if not parts.files:
            raise ValueError(f'no readable loss-history part under {str(history)!r}.') from None
        _register(con, parts)
        read()
        return missing


def _materialize(con) -> None:
    con.sql('CREATE OR REPLACE TABLE raw AS SELECT step, microbatch, sample_id, domain, loss, weight, active FROM history')
    con.sql('CREATE OR REPLACE TABLE counts AS SELECT step, microbatch, count(*) AS n FROM raw GROUP BY ALL')
    con.sql("""
        CREATE OR REPLACE TABLE h AS
        SELECT step, sample_id, domain, loss, weight, active, weight * n AS rel_weight
        FROM raw JOIN counts USING (step, microbatch)
    """)
    con.sql('DROP TABLE raw')


def register_history(con, history: str | os.PathLike) -> tuple[MissingPart, ...]:
    """Make the view ``history`` of DuckDB connection ``con``: every readable part of a history folder or URI, read
    in place (nothing is loaded; a part whose footer cannot be read is left out); return the parts left out.

    Raises:
        FileNotFoundError: If the folder holds no part files.
        ValueError: If no part can be read.
    """
    return _register_readable(con, history, lambda: con.sql('SELECT count(*) FROM history').fetchall())


def _register(con, parts: _Parts) -> None:
    paths = [part.path for part in parts.files]
    if isinstance(parts.filesystem, pafs.LocalFileSystem):  # DuckDB reads local files natively
        con.read_parquet(paths).create_view('history', replace=True)
    else:
        dataset = pads.dataset(paths, schema=HISTORY_SCHEMA, format='parquet', filesystem=parts.filesystem)
        con.register('history', dataset)


def _aggregate(con, windows: int, quantiles: tuple[float, ...], k: int, samples_to, map_points: int) -> Analysis:
    rows, steps, first_active = con.sql('SELECT count(*), max(step) + 1, min(step) FILTER (WHERE active) FROM h').fetchall()[0]
    if not rows:
        raise ValueError('the loss history is empty.')
    window = max(1, -(-steps // windows))
    con.sql("""
        CREATE TABLE samples AS
        SELECT sample_id, count(*) AS visits, avg(loss) AS mean_loss, stddev_pop(loss) AS loss_std,
               min(domain) AS domain, avg(rel_weight) FILTER (WHERE active) AS mean_rel_weight,
               count(*) FILTER (WHERE active) AS active_visits
        FROM h GROUP BY sample_id
    """)
    summary = con.sql("""
        WITH totals AS (SELECT sum(weight) AS total_weight, count(*) AS total_rows FROM h WHERE active)
        SELECT d.domain, d.rows, s.samples, d.mean_loss, a.mean_loss_reweighted, a.mean_rel_weight,
               a.weight_share, a.row_share
        FROM (SELECT domain, count(*) AS rows, avg(loss) AS mean_loss FROM h GROUP BY domain) d
        JOIN (SELECT domain, count(*) AS samples FROM samples GROUP BY domain) s USING (domain)
        LEFT JOIN (
            SELECT domain, avg(loss) AS mean_loss_reweighted, avg(rel_weight) AS mean_rel_weight,
                   sum(weight) / any_value(total_weight) AS weight_share,
                   count(*) / any_value(total_rows) AS row_share
            FROM h, totals WHERE active GROUP BY domain
        ) a USING (domain)
        ORDER BY domain
    """).to_arrow_table()
    over_time = con.sql(f"""
        SELECT (step // {window}) * {window} AS "window", domain, avg(loss) AS mean_loss,
               avg(rel_weight) AS mean_rel_weight, count(*) AS rows
        FROM h GROUP BY ALL ORDER BY "window", domain
    """).to_arrow_table()
    # Exact quantiles hold every value of a window in memory: beyond EXACT_QUANTILE_ROWS rows they are
    # taken over a seeded uniform sample of about that many rows.
    sample = '' if rows <= EXACT_QUANTILE_ROWS else f'USING SAMPLE {100 * EXACT_QUANTILE_ROWS / rows:.6f} PERCENT (bernoulli, 17)'
    q_cols = ', '.join(f'quantile_cont(rel_weight, {q}) AS q{round(q * 100):02d}' for q in quantiles)
    weight_quantiles = con.sql(f"""
        SELECT (step // {window}) * {window} AS "window", {q_cols}
        FROM (SELECT step, rel_weight FROM h WHERE active {sample}) GROUP BY "window" ORDER BY "window"
    """).to_arrow_table()
    con.sql('DROP TABLE h')
    extremes = [
        con.sql(f"""
            SELECT * FROM samples WHERE mean_rel_weight IS NOT NULL
            ORDER BY mean_rel_weight {order}, sample_id LIMIT {int(k)}
        """).to_arrow_table() for order in ('ASC', 'DESC')
    ]
    # a pseudo-random subset that does not depend on row order (which parallel aggregation does not keep)
    data_map = con.sql(f'SELECT * FROM samples ORDER BY hash(sample_id), sample_id LIMIT {int(map_points)}')
    data_map = data_map.to_arrow_table().sort_by('sample_id')
    if samples_to is None:
        samples = con.sql('SELECT * FROM samples ORDER BY sample_id').to_arrow_table()
    else:
        samples = None
        con.sql(f"COPY (SELECT * FROM samples ORDER BY sample_id) TO '{_sql_path(samples_to)}' "
                '(FORMAT parquet, COMPRESSION zstd)')
    return Analysis(
        summary, over_time, weight_quantiles, *extremes, data_map, samples, int(rows), int(steps),
        None if first_active is None else int(first_active),
    )


def _sql_path(path: str | os.PathLike) -> str:
    return os.fspath(path).replace("'", "''")


def most_deprioritised_domain(summary: pa.Table) -> int | None:
    """Domain index with the lowest mean relative weight on reweighted steps (``None`` if never reweighted)."""
    valid = summary.filter(pc.is_valid(summary['mean_rel_weight']))
    if valid.num_rows == 0:
        return None
    lowest = pc.min(valid['mean_rel_weight'])
    return int(valid.filter(pc.equal(valid['mean_rel_weight'], lowest))['domain'][0].as_py())

