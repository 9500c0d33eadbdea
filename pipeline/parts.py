"""An MDS stream written in parts: each Spark task writes one subfolder, the driver merges their indexes.

A stream ``{split}/{domain}`` made by several tasks holds ``{part:05d}/`` folders, each a complete MDS
folder written by Streaming's ``MDSWriter`` (uploaded straight to object storage for a remote dataset),
and one ``index.json`` that lists their shards in part order (see
:func:`reweigh.pipeline.shards.merge_indexes`), which Streaming and :class:`~reweigh.pipeline.SampleLookup`
read like any other.

Example:
    >>> import json, os, tempfile
    >>> import numpy as np
    >>> root = tempfile.mkdtemp()
    >>> columns = {'input_ids': 'ndarray:uint16', 'sample_id': 'int64', 'domain': 'int32', 'doc_ids': 'ndarray:int64'}
    >>> parts = []
    >>> for part in range(2):
    ...     with part_writer(root, root, 'train/code', part, remote=False, columns=columns) as (writer, index):
    ...         writer.write({'input_ids': np.arange(4, dtype=np.uint16), 'sample_id': part, 'domain': 0,
    ...                       'doc_ids': np.zeros(1, dtype=np.int64)})
    ...     parts.append((part, index))
    >>> write_merged_index(os.path.join(root, 'train/code'), parts)
    >>> [s['raw_data']['basename'] for s in json.load(open(f'{root}/train/code/index.json'))['shards']]
    ['00000/shard.00000.mds', '00001/shard.00000.mds']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reweigh.io import objects, uri
from reweigh.pipeline import shards

__all__ = ['part_writer', 'write_merged_index']


@contextmanager
def part_writer(out: str, local_root: str, rel: str, part: int, remote: bool, **mds: Any) -> Iterator[tuple[Any, dict]]:
    """An ``MDSWriter`` for part ``part`` of stream ``rel``; on exit, the part's parsed index is in the dict.

    Args:
        out: The dataset root (where a remote part is uploaded).
        local_root: The local dataset root (for a local ``out``; else a scratch folder is used).
        rel: The stream, e.g. ``train/code``.
        part: The part's number (its folder is ``{part:05d}``).
        remote: Whether ``out`` is remote.
        **mds: ``MDSWriter`` arguments (``columns``, ``compression``, ``hashes``, ``size_limit``).

    Yields:
        (MDSWriter, dict): The writer, and a dict that holds the part's index (``version``, ``shards``)
        once the block has finished without error.

    Raises:
        ValueError: If the part cannot be written (unreachable or unwritable store).
    """
    from streaming import MDSWriter

    folder = f'{rel}/{part:05d}'
    scratch = tempfile.mkdtemp(prefix='reweigh-part-') if remote else None
    local = os.path.join(scratch, folder) if scratch else os.path.join(local_root, folder)
    index: dict[str, Any] = {}
    try:
        with objects.writing(uri.join(out, folder)):
            writer = MDSWriter(out=(local, uri.join(out, folder)) if remote else local, keep_local=True,
                               exist_ok=True, **mds)
        yield writer, index
        with objects.writing(uri.join(out, folder)):
            writer.finish()
        with open(os.path.join(local, 'index.json')) as f:
            index.update(json.load(f))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def write_merged_index(folder: str, parts: list[tuple[int, dict[str, Any]]]) -> None:
    """Write ``folder/index.json`` listing the shards of ``(part, index)`` parts, in part order."""
    os.makedirs(folder, exist_ok=True)
    merged = shards.merge_indexes([(f'{part:05d}', index) for part, index in sorted(parts, key=lambda p: p[0])])
    with open(os.path.join(folder, 'index.json'), 'w') as f:
        json.dump(merged, f, sort_keys=True)
