"""The loss-history format: one definition for the writer (:mod:`reweigh.history.recorder`) and every reader.

A history folder holds one sub-folder per rank (:func:`rank_folder`) and one Parquet *part* per flushed step range::

    history/rank0/part-000000000-000000099.parquet   # steps 0..99 of rank 0
    history/rank1/part-000000000-000000099.parquet

Columns are :data:`HISTORY_SCHEMA`; the file metadata (key :data:`METADATA_KEY`) holds the run's strategy,
``r``, ``delta``, ``warmup``, ``token_normalize``, run name, world size and, where the data loader knew them, the
domain names, as JSON (:func:`encode_metadata`, :func:`read_metadata`). Parts appear atomically (written under a
temporary name starting with ``.``, then renamed), so a reader never sees a partial file; a part is still
checked before use, since a full disk or an older writer can leave one unreadable. Folders may be local
or on an object store (``s3://``, ``gs://``): listing and reading go through a pyarrow ``FileSystem``.
This module imports neither torch nor Composer.

Example:
    >>> from reweigh.history.format import part_name, parse_part_name
    >>> part_name(0, 99)
    'part-000000000-000000099.parquet'
    >>> parse_part_name('part-000000100-000000199.parquet'), parse_part_name('notes.txt')
    ((100, 199), None)
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reweigh.io.arrow import filesystem_for
from reweigh.io.local import atomic_path

__all__ = [
    'FLOAT_COLUMNS',
    'HISTORY_SCHEMA',
    'INT_COLUMNS',
    'METADATA_KEY',
    'Part',
    'encode_metadata',
    'is_readable',
    'part_rows',
    'list_parts',
    'parse_part_name',
    'part_name',
    'rank_folder',
    'read_metadata',
    'truncate_history',
    'write_part',
]

HISTORY_SCHEMA = pa.schema([
    ('step', pa.int64()),
    ('microbatch', pa.int16()),
    ('rank', pa.int16()),
    ('sample_id', pa.int64()),
    ('domain', pa.int32()),
    ('tokens', pa.int32()),
    ('mix', pa.int32()),
    ('loss', pa.float32()),
    ('weight', pa.float32()),
    ('r', pa.float32()),
    ('active', pa.bool_()),
])
"""One row per sample and step: ``step`` (the batch index), ``microbatch``, ``rank``, ``sample_id`` (-1 if the
batch had none), ``domain`` (-1 if none), ``tokens`` (loss-bearing tokens), ``mix`` (the number of the online-mixing
update whose proportions the sample was drawn under, :mod:`reweigh.pipeline.mixed_stream`; -1 without online mixing;
absent from parts written before it existed), ``loss`` (the sample's mean token loss), ``weight`` (per step and
microbatch the weights of all ranks sum to 1), ``r`` (temperature) and ``active`` (False during warm-up)."""

INT_COLUMNS = ('sample_id', 'domain', 'tokens', 'mix')
"""The per-sample integer columns, in the order the writer stacks them into one int64 tensor."""

FLOAT_COLUMNS = ('loss', 'weight')
"""The per-sample float columns, in the order the writer stacks them into one float32 tensor."""

METADATA_KEY = b'reweigh'
"""The Parquet file-metadata key under which every part holds the run's settings as JSON."""

_PART = re.compile(r'^part-(\d{9})-(\d{9})\.parquet$')


class Part(NamedTuple):
    """A finished part file: the steps it covers and where it is (a path on its filesystem)."""
    first: int
    last: int
    path: str


def part_name(first: int, last: int) -> str:
    """The file name of the part holding steps ``first`` to ``last``."""
    return f'part-{first:09d}-{last:09d}.parquet'


def parse_part_name(name: str) -> tuple[int, int] | None:
    """``(first, last)`` of a part's file name, or ``None`` if ``name`` is not a finished part."""
    m = _PART.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def rank_folder(rank: int) -> str:
    """The sub-folder of a history that holds the parts of global rank ``rank``: ``'rank{rank}'``."""
    return f'rank{rank}'


def encode_metadata(
    settings: dict, *, run_name: str | None, world_size: int, domains: list[str] | None = None,
) -> dict[bytes, bytes]:
    """The file metadata of a run's parts: the reweighting ``settings`` (``Reweighter.settings()``), the run name,
    the world size and, if known, the domain names by index.

    Example:
        >>> from reweigh.history.format import encode_metadata
        >>> encode_metadata({'strategy': 'uniform'}, run_name='demo', world_size=1, domains=['code', 'web'])
        {b'reweigh': b'{"run_name": "demo", "strategy": "uniform", "world_size": 1, "domains": ["code", "web"]}'}
    """
    meta = {'run_name': run_name, **settings, 'world_size': world_size}
    if domains is not None:
        meta['domains'] = list(domains)
    return {METADATA_KEY: json.dumps(meta).encode()}


def list_parts(folder: str | os.PathLike, filesystem: pafs.FileSystem | None = None, recursive: bool = False) -> list[Part]:
    """Every finished part under ``folder`` (its rank sub-folders too with ``recursive``), sorted by path.

    Args:
        folder: A local folder or URI; with ``filesystem``, a path on it.
        filesystem: The filesystem ``folder`` is on. Default: from ``folder`` (see :func:`reweigh.io.arrow.filesystem_for`).
        recursive: Also list sub-folders (a whole history rather than one rank).

    Example:
        >>> import tempfile
        >>> from reweigh.history.format import list_parts
        >>> list_parts(tempfile.mkdtemp())
        []
    """
    if filesystem is None:
        filesystem, folder = filesystem_for(folder)
    selector = pafs.FileSelector(str(folder), recursive=recursive, allow_not_found=True)
    parts = []
    for info in filesystem.get_file_info(selector):
        steps = parse_part_name(info.base_name) if info.type == pafs.FileType.File else None
        if steps is not None:
            parts.append(Part(*steps, info.path))
    return sorted(parts, key=lambda p: p.path)


def read_metadata(folder: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> dict:
    """The metadata (see :func:`encode_metadata`) of the first readable part under the history ``folder``, ``{}``
    if there is none or it carries none (histories written before the metadata did).

    Example:
        >>> import tempfile
        >>> from reweigh.history.format import read_metadata
        >>> read_metadata(tempfile.mkdtemp())
        {}
    """
    if filesystem is None:
        filesystem, folder = filesystem_for(folder)
    for part in list_parts(folder, filesystem, recursive=True):
        try:
            raw = (pq.ParquetFile(part.path, filesystem=filesystem).schema_arrow.metadata or {}).get(METADATA_KEY)
        except (pa.ArrowException, OSError):
            continue
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        return meta if isinstance(meta, dict) else {}
    return {}


def is_readable(path: str, filesystem: pafs.FileSystem | None = None) -> bool:
    """Whether the part at ``path`` has a readable Parquet footer; warns naming the file if not."""
    return _rows_or_warn(path, filesystem) is not None


def _rows_or_warn(path: str, filesystem: pafs.FileSystem | None = None) -> int | None:
    """:func:`part_rows`, warning naming the file where its footer cannot be read (one footer read)."""
    rows = part_rows(path, filesystem)
    if rows is None:
        warnings.warn(f'loss history: part file {path} is unreadable and is skipped.', stacklevel=3)
    return rows


def part_rows(path: str, filesystem: pafs.FileSystem | None = None) -> int | None:
    """The rows of the part at ``path`` from its Parquet footer, or ``None`` if the footer cannot be read (a part cut
    short by a full disk or a copy)."""
    try:
        return pq.ParquetFile(path, filesystem=filesystem).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None


def write_part(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to the local ``path`` atomically (:func:`reweigh.io.local.atomic_path`)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression='zstd')


def truncate_history(folder: str | os.PathLike, step: int) -> int:
    """Drop rows with ``step >= step`` from the local part files in ``folder`` (used when a run resumes).

    Parts wholly at or past ``step`` are deleted; a part that straddles it is rewritten in place
    (atomically, keeping its name, whose last step is then an upper bound). Leftover temporary files of an
    interrupted write are removed; an unreadable part is left for readers to skip, with a warning.

    Returns:
        int: The number of rows dropped.

    Example:
        >>> import tempfile
        >>> from reweigh.history.format import truncate_history
        >>> truncate_history(tempfile.mkdtemp(), 10)
        0
    """
    folder = Path(folder)
    for tmp in folder.glob('.part-*.tmp'):
        tmp.unlink()
    dropped = 0
    for first, last, path in list_parts(folder):
        if last < step:
            continue
        if first >= step:
            dropped += _rows_or_warn(path) or 0
            os.unlink(path)
            continue
        if not is_readable(path):
            continue
        table = pq.read_table(path)
        keep = table.filter(pc.less(table['step'], step))
        dropped += table.num_rows - keep.num_rows
        write_part(keep, path)
    return dropped
