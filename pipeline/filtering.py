"""The filtering step of ``curate_dataset``, as both its engines run it: copy the training samples a selection keeps.

The local engine runs :func:`copy_kept` over each domain's training stream, the Spark engine over each
task's run of shards (:mod:`reweigh.pipeline.spark_curate`); either writes with :func:`mds_settings`, those
of the source dataset, so the copy's shards are encoded as its source's.

Example:
    >>> import numpy as np
    >>> samples = [{'input_ids': np.arange(3, dtype=np.uint16), 'sample_id': sid, 'domain': 0,
    ...             'doc_ids': np.zeros(1, dtype=np.int64)} for sid in range(4)]
    >>> class Writer(list):
    ...     write = list.append
    >>> writer = Writer()
    >>> kept, dropped, examples, ids = copy_kept(samples, lambda sid: sid % 2 == 0, writer)
    >>> kept, dropped, examples, ids
    ({'samples': 2, 'tokens': 6}, {'samples': 2, 'tokens': 6}, [1, 3], [0, 2])
    >>> [row['sample_id'] for row in writer]
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from reweigh.pipeline.rows import sample_row
from reweigh.pipeline.shards import HASHES

__all__ = ['copy_kept', 'mds_settings']


def mds_settings(manifest: Any) -> dict[str, Any]:
    """The ``MDSWriter`` settings of a curated copy: those the source dataset was written with.

    Example:
        >>> from reweigh.pipeline.manifest import Manifest
        >>> from reweigh.pipeline.shards import columns
        >>> m = Manifest(seq_len=8, domains=[], tokenizer={}, mds={'columns': columns(512), 'compression': 'zstd'})
        >>> mds_settings(m)['compression'], mds_settings(m)['size_limit']
        ('zstd', 16777216)
    """
    return {'columns': manifest.mds['columns'], 'compression': manifest.mds.get('compression'),
            'hashes': manifest.mds.get('hashes', HASHES), 'size_limit': manifest.config.get('shard_size_limit', 1 << 24)}


def copy_kept(samples: Iterable[dict[str, Any]], keeps: Callable[[int], bool], writer: Any,
              bar: Any = None) -> tuple[dict[str, int], dict[str, int], list[int], list[int]]:
    """Write the samples ``keeps`` keeps to ``writer``; return kept and dropped counts, dropped examples, kept ids.

    Args:
        samples (Iterable[dict]): Decoded MDS samples, in stored order.
        keeps (Callable[[int], bool]): Whether a sample (by id) is kept.
        writer: Where kept samples go (an ``MDSWriter``: anything with ``write(row)``).
        bar (optional): A progress bar, advanced once per sample.

    Returns:
        tuple: Kept and dropped ``{'samples', 'tokens'}`` counts, the first 20 dropped ids, the kept ids in order.
    """
    kept, dropped = {'samples': 0, 'tokens': 0}, {'samples': 0, 'tokens': 0}
    ids, examples = [], []
    for sample in samples:
        sid = int(sample['sample_id'])
        counts = kept if keeps(sid) else dropped
        counts['samples'] += 1
        counts['tokens'] += len(sample['input_ids'])
        if counts is kept:
            tokens = sample['input_ids']
            writer.write(sample_row(tokens, sid, sample['domain'], sample['doc_ids'], tokens.dtype))
            ids.append(sid)
        elif len(examples) < 20:
            examples.append(sid)
        if bar is not None:
            bar.update(1)
    return kept, dropped, examples, ids
