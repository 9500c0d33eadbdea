"""Write a curated copy of a prepared dataset: the training samples a selection keeps, everything else as is.

The copy is a reweigh dataset like any other (same MDS layout, columns, tokenizer and validation splits),
written with Streaming's ``MDSWriter`` to a local folder or straight to ``s3://``/``gs://``. Kept samples keep
their sample ids, domains and source document ids, so a run on the copy has a history that joins the
original's; ``curation/{domain}.parquet`` lists the kept ids in stored order, which is how
:class:`~reweigh.pipeline.SampleLookup` finds them. The manifest records the source dataset and run, the
rules and the counts, and is written last (:mod:`reweigh.pipeline.transaction`, as ``prepare_dataset``
writes): a curate that stops half-way leaves no dataset that looks complete. Both engines filter with
:func:`~reweigh.pipeline.filtering.copy_kept`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from reweigh.io import uri
from reweigh.pipeline.engines import check_engine, start_engine
from reweigh.pipeline.filtering import copy_kept, mds_settings
from reweigh.pipeline.ids import SPLITS
from reweigh.pipeline.lookup import SampleLookup
from reweigh.pipeline.manifest import CURATION_FOLDER, DomainInfo
from reweigh.pipeline.rows import documents_path
from reweigh.pipeline.transaction import DatasetWrite, dataset_write

__all__ = ['CurateResult', 'curate_dataset']


@dataclass
class CurateResult:
    """What :func:`curate_dataset` wrote."""
    kept: dict[str, dict[str, int]]
    """Per domain: ``samples`` and ``tokens`` kept."""
    dropped: dict[str, dict[str, int]]
    """Per domain: ``samples`` and ``tokens`` dropped."""
    dropped_ids: dict[str, list[int]]
    """Per domain: the first dropped sample ids (up to 20), for examples."""
    seconds: float
    samples_per_s: float


def curate_dataset(source: str, out: str, keeps: Callable[[int], bool], record: dict[str, Any], *,
                   cache: str | None = None, overwrite: bool = False, progress: bool | None = None,
                   engine: str = 'local', spark_master: str | None = None, shards_per_task: int = 8) -> CurateResult:
    """Copy the dataset at ``source`` to ``out``, keeping the training samples for which ``keeps(sample_id)``.

    Args:
        source: The prepared dataset (local folder or URI).
        out: Where the curated dataset goes (local folder or ``s3://``/``gs://``); must be empty or absent.
        keeps: Whether a training sample (by id) goes into the copy.
        record: What made the selection (source run, rules), stored in the manifest's ``curation``.
        cache: Local folder for a remote ``source``'s files. Default: a temporary folder.
        overwrite: Replace whatever ``out`` holds.
        progress: Show a progress bar; default: when stderr is a terminal.
        engine: ``'local'`` (this process) or ``'spark'``: Spark executors filter the training shards, each
            task ``shards_per_task`` of them (:mod:`reweigh.pipeline.spark_curate`); the copy is the same.
            ``source`` must then be readable by the executors.
        spark_master: Spark master URL for ``engine='spark'`` (default ``local[*]``, or the active session's).
        shards_per_task: Source shards per Spark task.

    Returns:
        CurateResult: counts per domain and the throughput.

    Raises:
        ValueError: If ``out`` is ``source``, holds data (without ``overwrite``), or cannot be written, if
            the selection keeps no training sample of any domain, or for an unknown engine (or, for
            ``'spark'``, no pyspark or Java).

    Example:
        >>> import tempfile
        >>> from reweigh.pipeline import SampleLookup, make_sample_id
        >>> from reweigh.pipeline.curate import curate_dataset
        >>> from reweigh.pipeline.prepare import prepare_default_corpus
        >>> source, out = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> _ = prepare_default_corpus(source, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32, progress=False)
        >>> result = curate_dataset(source, out, lambda sid: sid % 2 == 0, {'rules': 'even ids'}, progress=False)
        >>> seen = result.kept['code']['samples'] + result.dropped['code']['samples']
        >>> seen == SampleLookup(source).manifest.domain('code').sequences['train']
        True
        >>> sid = make_sample_id(0, 'train', 2)
        >>> SampleLookup(out).text(sid) == SampleLookup(source).text(sid)
        True
    """
    start = time.perf_counter()
    if uri.is_remote(out) == uri.is_remote(source) and os.path.abspath(str(out)) == os.path.abspath(str(source)):
        raise ValueError(f'the curated dataset cannot replace its source ({source}); choose another --out')
    check_engine(engine)
    progress = sys.stderr.isatty() if progress is None else progress
    with dataset_write(out, 'reweigh-curate-') as write:
        lookup = SampleLookup(source, cache or os.path.join(write.scratch, '.source'))
        manifest = lookup.manifest
        existing = write.existing()
        spark = start_engine(engine, spark_master, progress=progress, app_name='reweigh curate')
        write.claim(existing, overwrite)
        kept, dropped, examples, domains = {}, {}, {}, []
        total = sum(d.sequences.get('train', 0) for d in manifest.domains)
        bar = tqdm(total=total, desc='curate', unit='sample', disable=not progress or spark is not None)
        if spark is not None:
            from reweigh.pipeline.spark_curate import curate_train

            curated = curate_train(spark, lookup, keeps, write.out, write.root, write.remote, shards_per_task)
        for info in sorted(manifest.domains, key=lambda d: d.index):
            if spark is not None:
                k, dr, ex, ids = curated[info.name]
            else:
                k, dr, ex, ids = _curate_domain(lookup, info, keeps, write, manifest, bar)
            kept[info.name], dropped[info.name], examples[info.name] = k, dr, ex
            _write_ids(ids, os.path.join(write.root, CURATION_FOLDER, f'{info.name}.parquet'))
            domains.append(replace(info, sequences={**info.sequences, 'train': k['samples']},
                                   tokens={**info.tokens, 'train': k['tokens']}))
            for split in SPLITS:
                if split != 'train':
                    _copy_stream(lookup, info.path(split), write.root)
        bar.close()
        if not any(k['samples'] for k in kept.values()):
            raise ValueError('the rules drop every training sample; loosen them')
        for name in manifest.tokenizer.get('files', []):
            _copy(lookup, f'{manifest.tokenizer["path"]}/{name}', write.root)
        for info in manifest.domains:
            _copy(lookup, documents_path(info.name), write.root)
        curation = {**record, 'source_dataset': str(source), 'source_fingerprint': manifest.fingerprint,
                    'kept': kept, 'dropped': dropped}
        fingerprint = hashlib.sha256(json.dumps({'source': manifest.fingerprint, 'curation': curation},
                                                sort_keys=True, default=str).encode()).hexdigest()
        scheme = {**manifest.sample_id_scheme, 'sequence_index': 'position of the sequence in {split}/{domain} of '
                  f'the source dataset; the kept training ids are listed in {CURATION_FOLDER}/{{domain}}.parquet'}
        write.commit(replace(manifest, domains=domains, fingerprint=fingerprint, curation=curation,
                             source=f'curated from {source}: {manifest.source}', sample_id_scheme=scheme))
    seconds = time.perf_counter() - start
    return CurateResult(kept, dropped, examples, seconds, total / max(seconds, 1e-9))


def _curate_domain(lookup: SampleLookup, info: DomainInfo, keeps: Callable[[int], bool], write: DatasetWrite,
                   manifest: Any, bar: Any) -> tuple[dict[str, int], dict[str, int], list[int], list[int]]:
    with write.stream(info.path('train'), **mds_settings(manifest)) as writer:
        return copy_kept(lookup.samples(info.name, 'train'), keeps, writer, bar)


def _write_ids(ids: list[int], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({'sample_id': pa.array(ids, pa.int64())}), path)


def _copy(lookup: SampleLookup, rel: str, local_root: str) -> None:
    dest = os.path.join(local_root, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(lookup.fetch(rel), dest)


def _copy_stream(lookup: SampleLookup, rel: str, local_root: str) -> None:
    """Copy an MDS stream (its ``index.json`` and shard files) unchanged."""
    _copy(lookup, f'{rel}/index.json', local_root)
    for shard in lookup.shards(rel):
        stored = shard.get('zip_data') or shard['raw_data']
        _copy(lookup, f'{rel}/{stored["basename"]}', local_root)
