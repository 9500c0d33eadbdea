"""Tables that answer "which samples and domains did training deprioritise, and when?".

Pure functions over a loss-history table (see :mod:`reweigh.algorithms.history`); the aggregation runs
in DuckDB directly on the Arrow table, so tens of millions of rows take seconds. Weights are reported
*relative to uniform*: ``rel_weight = weight * n``, where ``n`` is the number of samples the weight was
normalised over (one step's microbatch across all ranks), so 1.0 means "counted like in plain
training", 0.5 "half as much".
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reweigh.algorithms.history import HISTORY_SCHEMA

__all__ = ['Analysis', 'analyze_history', 'extreme_samples', 'load_history', 'most_deprioritised_domain']


def load_history(path: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read every readable part file under ``path`` (local folder or ``s3://``/``gs://`` URI).

    Unreadable parts (e.g. truncated by a crash of an older writer or a full disk) are skipped with a
    warning rather than failing the whole analysis.

    Raises:
        FileNotFoundError: If ``path`` holds no part files.
    """
    if filesystem is None:
        filesystem, path = _filesystem(path)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    files = sorted(
        info.path for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and Path(info.path).name.startswith('part-')
        and info.path.endswith('.parquet')
    )
    if not files:
        raise FileNotFoundError(f'no loss-history part files under {path!r}.')
    readable = []
    for f in files:
        try:
            _ = pq.ParquetFile(f, filesystem=filesystem).metadata
            readable.append(f)
        except (pa.ArrowException, OSError) as e:
            warnings.warn(f'skipping unreadable history part {f}: {e}', stacklevel=2)
    return pads.dataset(readable, schema=HISTORY_SCHEMA, format='parquet', filesystem=filesystem).to_table()


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for a local path or URI; ``s3://`` honours ``S3_ENDPOINT_URL`` as Streaming does.

    Credentials come from the environment or the standard cloud config files, as pyarrow reads them.
    """
    if '://' not in path:
        return pafs.LocalFileSystem(), path
    endpoint = os.environ.get('S3_ENDPOINT_URL')
    if path.startswith('s3://') and endpoint:
        scheme, _, host = endpoint.partition('://')
        return pafs.S3FileSystem(endpoint_override=host, scheme=scheme), path[len('s3://'):]
    return pafs.FileSystem.from_uri(path)


class Analysis(NamedTuple):
    """The analysis tables (pyarrow), ready to save or plot."""
    summary: pa.Table
    """Per domain: rows, samples, mean loss; on reweighted steps: mean loss, mean relative weight, share
    of the total weight and share of the rows (null for a run that never reweighted)."""
    domain_over_time: pa.Table
    """Per step window and domain: mean loss and mean relative weight."""
    weight_quantiles: pa.Table
    """Per step window: quantiles of the relative weight over reweighted rows."""
    samples: pa.Table
    """Per sample: visits, mean and std of loss across visits, domain, mean relative weight (reweighted rows)."""
    rows: int
    steps: int
    first_active_step: int | None


def analyze_history(
    table: pa.Table,
    windows: int = 10,
    quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
) -> Analysis:
    """Aggregate a loss history into the tables of :class:`Analysis` (with DuckDB, zero-copy on Arrow).

    Args:
        table (pa.Table): Rows with the history schema.
        windows (int): Number of equal step windows for the over-time tables. Default: ``10``.
        quantiles (tuple[float, ...]): Quantiles of the relative weight per window.

    Returns:
        Analysis: the tables.

    Raises:
        ValueError: If the history is empty.

    Example:
        >>> import pyarrow as pa
        >>> from reweigh.cli.analysis import analyze_history
        >>> t = pa.table({'step': [0, 0, 1, 1], 'microbatch': [0] * 4, 'rank': [0] * 4,
        ...               'sample_id': [1, 2, 1, 2], 'domain': [0, 1, 0, 1], 'tokens': [9] * 4,
        ...               'loss': [1.0, 3.0, 0.5, 3.0], 'weight': [0.5, 0.5, 0.25, 0.75],
        ...               'r': [1.0] * 4, 'active': [False, False, True, True]})
        >>> a = analyze_history(t)
        >>> a.summary.column('mean_rel_weight').to_pylist()
        [0.5, 1.5]
    """
    if table.num_rows == 0:
        raise ValueError('the loss history is empty.')
    con = duckdb.connect()
    con.register('history', table)
    con.sql(
        'CREATE TEMP TABLE h AS SELECT *, weight * count(*) OVER (PARTITION BY step, microbatch) AS rel_weight '
        'FROM history',
    )
    steps, first_active = con.sql('SELECT max(step) + 1, min(step) FILTER (WHERE active) FROM h').fetchall()[0]
    window = max(1, -(-steps // windows))
    summary = con.sql("""
        WITH per_sample AS (SELECT sample_id, min(domain) AS domain FROM h GROUP BY sample_id),
        totals AS (SELECT sum(weight) AS total_weight, count(*) AS total_rows FROM h WHERE active)
        SELECT d.domain, d.rows, s.samples, d.mean_loss, a.mean_loss_reweighted, a.mean_rel_weight,
               a.weight_share, a.row_share
        FROM (SELECT domain, count(*) AS rows, avg(loss) AS mean_loss FROM h GROUP BY domain) d
        JOIN (SELECT domain, count(*) AS samples FROM per_sample GROUP BY domain) s USING (domain)
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
    q_cols = ', '.join(f'quantile_cont(rel_weight, {q}) AS q{round(q * 100):02d}' for q in quantiles)
    weight_quantiles = con.sql(f"""
        SELECT (step // {window}) * {window} AS "window", {q_cols}
        FROM h WHERE active GROUP BY "window" ORDER BY "window"
    """).to_arrow_table()
    samples = con.sql("""
        SELECT sample_id, count(*) AS visits, avg(loss) AS mean_loss, stddev_pop(loss) AS loss_std,
               min(domain) AS domain, avg(rel_weight) FILTER (WHERE active) AS mean_rel_weight
        FROM h GROUP BY sample_id ORDER BY sample_id
    """).to_arrow_table()
    con.close()
    return Analysis(
        summary, over_time, weight_quantiles, samples, table.num_rows, int(steps),
        None if first_active is None else int(first_active),
    )


def extreme_samples(samples: pa.Table, k: int = 10, min_visits: int = 1) -> tuple[pa.Table, pa.Table]:
    """The ``k`` most deprioritised and ``k`` most emphasised samples by mean relative weight."""
    eligible = samples.filter(pc.and_(pc.is_valid(samples['mean_rel_weight']), pc.greater_equal(samples['visits'], min_visits)))
    low = eligible.sort_by([('mean_rel_weight', 'ascending'), ('sample_id', 'ascending')]).slice(0, k)
    high = eligible.sort_by([('mean_rel_weight', 'descending'), ('sample_id', 'ascending')]).slice(0, k)
    return low, high


def most_deprioritised_domain(summary: pa.Table) -> int | None:
    """Domain index with the lowest mean relative weight on reweighted steps (``None`` if never reweighted)."""
    valid = summary.filter(pc.is_valid(summary['mean_rel_weight']))
    if valid.num_rows == 0:
        return None
    return int(valid['domain'][int(np.argmin(valid['mean_rel_weight'].to_numpy()))].as_py())
