"""The Spark engine of ``curate_dataset``: executors filter the training shards, the driver writes the rest.

Each domain's training stream is cut into runs of ``shards_per_task`` consecutive shards. A task reads
its run from the source dataset (through its own :class:`~reweigh.pipeline.SampleLookup`, so a remote
source is downloaded by the executor), keeps the samples the selection keeps
(:func:`~reweigh.pipeline.filtering.copy_kept`, as the local engine does), and writes them as one part of
the stream (:mod:`reweigh.pipeline.parts`, straight to object storage for a remote output). The driver
merges the parts' indexes in order, so the curated stream holds the kept samples in the source's order,
as the local engine writes them. The selection (any ``keeps(sample_id)`` cloudpickle can
serialise: :meth:`reweigh.analysis.curation.Selection.keeps`, a lambda) is broadcast to the executors once.

Example:
    >>> from reweigh.pipeline.curate import curate_dataset
    >>> curate_dataset('s3://bucket/data', 's3://bucket/curated', selection.keeps, record,
    ...                engine='spark', spark_master='yarn')  # doctest: +SKIP
    >>> DEFAULT_SHARDS_PER_TASK  # source shards read by one task
    8
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

from reweigh.pipeline.filtering import copy_kept, mds_settings
from reweigh.pipeline.lookup import SampleLookup
from reweigh.pipeline.parts import part_writer, write_merged_index

__all__ = ['DEFAULT_SHARDS_PER_TASK', 'curate_train']

DEFAULT_SHARDS_PER_TASK = 8


def curate_train(spark: Any, lookup: SampleLookup, keeps: Callable[[int], bool], out: str, local_root: str,
                 remote: bool, shards_per_task: int = DEFAULT_SHARDS_PER_TASK,
                 ) -> dict[str, tuple[dict[str, int], dict[str, int], list[int], list[int]]]:
    """Write every domain's curated training stream; per domain: kept and dropped counts, examples, kept ids.

    Args:
        spark: The ``SparkSession``.
        lookup: The source dataset (its root must be readable by the executors: a URI or a shared folder).
        keeps: Whether a training sample (by id) goes into the copy; serialised to the executors with cloudpickle.
        out: The curated dataset's root.
        local_root: Where the driver writes the merged indexes (``out``, or a staging folder for a remote ``out``).
        remote: Whether ``out`` is remote.
        shards_per_task: Source shards read by one task.

    Returns:
        dict: Domain name to ``(kept, dropped, dropped examples, kept ids in order)``, as the local engine's.
    """
    if shards_per_task < 1:
        raise ValueError(f'shards_per_task must be at least 1, got {shards_per_task}')
    tasks = []
    for info in sorted(lookup.manifest.domains, key=lambda d: d.index):
        stream = lookup.shards(info.path('train'))
        for part, first in enumerate(range(0, len(stream), shards_per_task)):
            tasks.append((info.path('train'), part, stream[first:first + shards_per_task]))
    from pyspark import cloudpickle

    sc = spark.sparkContext
    keeps_b = sc.broadcast(cloudpickle.dumps(keeps))  # a broadcast pickles plainly; cloudpickle takes lambdas too
    mds = mds_settings(lookup.manifest)
    root = lookup.root
    written = (sc.parallelize(tasks, max(1, len(tasks)))
               .map(lambda task: _curate_task(task, root, pickle.loads(keeps_b.value), out, local_root, remote, mds))
               .collect())
    keeps_b.destroy()
    results = {}
    for info in lookup.manifest.domains:
        parts = sorted((p for p in written if p['rel'] == info.path('train')), key=lambda p: p['part'])
        write_merged_index(os.path.join(local_root, info.path('train')), [(p['part'], p['index']) for p in parts])
        kept = {key: sum(p['result'][0][key] for p in parts) for key in ('samples', 'tokens')}
        dropped = {key: sum(p['result'][1][key] for p in parts) for key in ('samples', 'tokens')}
        examples = [sid for p in parts for sid in p['result'][2]][:20]
        ids = [sid for p in parts for sid in p['result'][3]]
        results[info.name] = (kept, dropped, examples, ids)
    return results


def _curate_task(task: tuple[str, int, list[dict[str, Any]]], source: str, keeps: Callable[[int], bool], out: str,
                 local_root: str, remote: bool, mds: dict[str, Any]) -> dict[str, Any]:
    rel, part, entries = task
    with tempfile.TemporaryDirectory(prefix='reweigh-spark-curate-') as cache:
        lookup = SampleLookup(source, cache)
        samples = (sample for shard in entries for sample in lookup.shard_samples(rel, shard))
        with part_writer(out, local_root, rel, part, remote, **mds) as (writer, index):
            result = copy_kept(samples, keeps, writer)
    return {'rel': rel, 'part': part, 'index': index, 'result': result}
