"""The Spark engine of ``prepare_dataset``: the same dataset as the local engine, tokenised and packed by executors.

The local engine reads each domain's documents in order, numbers them, and packs them into sequences one
after the other. Here the work is cut into *units* (one input file or object each, read by an executor,
so inputs must be on storage every executor reaches: object storage or a shared file system; documents
of in-memory or ``hf:`` inputs, which the driver reads, in chunks of :data:`DOCS_PER_UNIT`), and four
steps run over them:

1. Executors read and tokenise each unit (kept in Spark's storage, memory then disk) and the driver
   collects the number of non-empty documents per unit. A document's id is its position in its domain's
   reading order, as in the local engine: the documents of the units before it, plus its place in its
   unit. That is what fixes the split (:mod:`reweigh.pipeline.splits`) and the sample ids.
2. Executors count each unit's tokens per split; the driver turns the counts into each unit's offset in
   its split's concatenation.
3. Executors cut each unit at the sequence boundaries (:func:`~reweigh.pipeline.packing.cut_pieces`) and
   the pieces are range-partitioned by sequence index ``k`` into write tasks of ``sequences_per_task``
   each, so the pieces of a sequence that straddles units meet in one task (one shuffle in all).
4. Each task joins its pieces (:func:`~reweigh.pipeline.packing.join_pieces`), gives sequence ``k`` of a
   split the sample id ``make_sample_id(domain, split, k)`` as the local engine does, and writes its range
   as one part of the stream (:mod:`reweigh.pipeline.parts`: a ``{part:05d}/`` MDS folder, straight to
   object storage for a remote output); the driver merges the parts' indexes in order into the stream's
   ``index.json``. A sample's position in its stream is therefore its sequence index, which is what
   :class:`~reweigh.pipeline.SampleLookup` relies on.

The documents table (:mod:`reweigh.pipeline.rows`, as the local engine's) is written by the driver from the units
in order, one read task's units in memory at a time.
A rerun with the same inputs gives the same ids: they depend on the sorted file listing and the reading
order within files, never on partitioning, executors or timing.

Example:
    >>> from reweigh.pipeline import parse_domain_arg, prepare_dataset
    >>> prepare_dataset([parse_domain_arg('web=corpus/web/')], 's3://bucket/data', engine='spark',
    ...                 spark_master='spark://head:7077')  # doctest: +SKIP
    >>> default_sequences_per_task(seq_len=2048, shard_size_limit=1 << 26, bytes_per_token=2)  # 2 shards of 64 MB
    32263
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby, islice
from typing import Any

import numpy as np

from reweigh.pipeline import splits
from reweigh.pipeline.encode import encode_documents
from reweigh.pipeline.ids import SPLITS, make_sample_id
from reweigh.pipeline.manifest import DomainInfo
from reweigh.pipeline.packing import Piece, cut_pieces, join_pieces
from reweigh.pipeline.parts import part_writer, write_merged_index
from reweigh.pipeline.rows import DOCUMENTS_FOLDER, documents_path, documents_schema, documents_table, sample_row, token_dtype
from reweigh.pipeline.sources import Document, DomainSpec, iter_documents, iter_file, list_files

__all__ = ['DOCS_PER_UNIT', 'READ_TASKS_PER_CORE', 'default_sequences_per_task', 'write_domains']

DOCS_PER_UNIT = 1024
"""Documents per unit for inputs the driver reads (the embedded corpus, ``hf:`` datasets)."""
READ_TASKS_PER_CORE = 4
"""Read-and-tokenise tasks per core of the cluster (``defaultParallelism``); the driver writes the documents
table one task's units at a time."""
_TOKENIZERS: dict[str, Any] = {}


@dataclass(frozen=True)
class _Unit:
    """A run of consecutive documents of one domain: one input file, or documents read by the driver."""

    domain: int
    index: int
    spec: DomainSpec
    path: str | None = None
    strict: bool = False
    docs: tuple[Document, ...] = ()

    def documents(self) -> Iterator[Document]:
        if self.path is None:
            yield from self.docs
        else:
            yield from iter_file(self.path, self.spec, self.strict)


@dataclass
class _Tokenised:
    """A unit's non-empty documents: their sources, lengths in characters and token ids."""

    domain: int
    index: int
    sources: list[str]
    chars: list[int]
    ids: list[np.ndarray]


def default_sequences_per_task(seq_len: int, shard_size_limit: int, bytes_per_token: int) -> int:
    """Sequences per write task: about two shards' worth, so tasks write whole shards and balance the cores."""
    return max(1, 2 * shard_size_limit // (seq_len * bytes_per_token + 64))


def write_domains(spark: Any, domains: Sequence[DomainSpec], tokenizer_dir: str, eos_id: int, seq_len: int,
                  val_every: int, out: str, local_root: str, remote: bool, columns: dict[str, str], compression: str,
                  hashes: list[str], shard_size_limit: int, sequences_per_task: int | None = None) -> list[DomainInfo]:
    """Tokenise, pack and write every domain's MDS streams and documents table; return their ``DomainInfo``.

    Args:
        spark: The ``SparkSession``.
        domains: The domains, in index order.
        tokenizer_dir: Local folder of the saved tokenizer (shipped to the executors with ``addFile``).
        eos_id: The tokenizer's EOS token, appended after every document.
        seq_len: Tokens per sequence.
        val_every: Document ``i`` of a domain is ``val`` when ``i % val_every == 0``.
        out: The dataset root (local folder, or URI the executors write shards to).
        local_root: Where the driver writes the documents tables and stream indexes (``out``, or a
            staging folder uploaded afterwards for a remote ``out``).
        remote: Whether ``out`` is remote.
        columns, compression, hashes, shard_size_limit: ``MDSWriter`` settings.
        sequences_per_task: Sequences written per task (default: :func:`default_sequences_per_task`).

    Raises:
        ValueError: For an empty or single-document domain, or an input or output that cannot be used.
    """
    from pyspark import StorageLevel

    sc = spark.sparkContext
    dtype = token_dtype(columns)
    per_task = sequences_per_task or default_sequences_per_task(seq_len, shard_size_limit, dtype.itemsize)
    # addFile names must be unique for the session's lifetime; the copy gives each call its own.
    shipped = os.path.join(local_root, '.spark', f'tokenizer-{uuid.uuid4().hex}')
    shutil.copytree(tokenizer_dir, shipped)
    sc.addFile(shipped, recursive=True)
    units = _units(domains)
    # Consecutive units share a read task; four tasks per core balance units of different sizes.
    tokenised = (sc.parallelize(units, max(1, min(len(units), sc.defaultParallelism * READ_TASKS_PER_CORE)))
                 .map(lambda unit: _tokenise(unit, os.path.basename(shipped)))
                 .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        # Job 1: documents per unit -> each unit's first document id.
        counts = dict(tokenised.map(lambda t: ((t.domain, t.index), len(t.ids))).collect())
        doc_offsets, documents = _offsets(counts, len(domains))
        splits.check_counts(domains, {spec.name: documents[i] for i, spec in enumerate(domains)})
        doc_offsets_b = sc.broadcast(doc_offsets)
        # Job 2: tokens per unit and split -> each unit's offset in its split's concatenation.
        lengths = dict(tokenised.map(lambda t: ((t.domain, t.index), _split_tokens(t, doc_offsets_b.value, val_every)))
                       .collect())
        token_offsets, totals = _token_offsets(lengths)
        token_offsets_b = sc.broadcast(token_offsets)
        # Step 3: cut every unit at the sequence boundaries; the pieces of one sequence meet in its write task.
        tasks = _tasks(totals, seq_len, per_task)
        names = [d.name for d in domains]
        written = (tokenised.flatMap(lambda t: _pieces(t, doc_offsets_b.value, token_offsets_b.value, val_every,
                                                       seq_len, eos_id))
                   .partitionBy(sum(n for _, n in tasks.values()), lambda key: tasks[key[:2]][0] + key[2] // per_task)
                   # Step 4: each task joins and writes its range of sequences as one part of the stream.
                   .mapPartitionsWithIndex(lambda task, records: _write_task(
                       task, records, names, totals, seq_len, out, local_root, remote, columns, dtype, compression,
                       hashes, shard_size_limit, per_task))
                   .collect())
        infos = _infos(domains, documents, val_every, totals, seq_len)
        _merge_indexes(written, local_root)
        _write_documents(tokenised, domains, doc_offsets, val_every, local_root)
    except Exception as e:
        error = _user_error(e)
        if error is e:
            raise
        raise error from e
    finally:
        tokenised.unpersist()
        shutil.rmtree(os.path.join(local_root, '.spark'), ignore_errors=True)
    return infos


def _units(domains: Sequence[DomainSpec]) -> list[_Unit]:
    units = []
    for domain, spec in enumerate(domains):
        if spec.kind == 'path':
            files = list_files(spec.location)
            if not files:
                raise FileNotFoundError(f'domain {spec.name!r}: input {spec.location!r} does not exist')
            units += [_Unit(domain, i, spec, path, files == [spec.location]) for i, path in enumerate(files)]
        else:  # read by the driver, shipped in chunks
            docs, index = iter_documents(spec), 0
            while chunk := tuple(islice(docs, DOCS_PER_UNIT)):
                units.append(_Unit(domain, index, spec, docs=chunk))
                index += 1
    return units


def _tokenizer(name: str) -> Any:
    from pyspark import SparkFiles

    from reweigh.pipeline.tokenizer import load_tokenizer

    if name not in _TOKENIZERS:
        # Spark runs one task per core: a task's tokenizer batches on one thread, not on every core of the machine.
        os.environ['TOKENIZERS_PARALLELISM'] = 'false'
        _TOKENIZERS[name] = load_tokenizer(SparkFiles.get(name))
    return _TOKENIZERS[name]


def _tokenise(unit: _Unit, tokenizer: str) -> _Tokenised:
    t = _Tokenised(unit.domain, unit.index, [], [], [])
    for batch, encoded in encode_documents(_tokenizer(tokenizer), unit.documents()):
        t.sources += [d.source for d in batch]
        t.chars += [len(d.text) for d in batch]
        t.ids += [np.asarray(x, dtype=np.int32) for x in encoded]
    return t


def _offsets(counts: dict[tuple[int, int], int], n_domains: int) -> tuple[dict[tuple[int, int], int], list[int]]:
    """Each unit's first document id, and the documents per domain."""
    offsets, totals = {}, [0] * n_domains
    for domain, index in sorted(counts):
        offsets[domain, index] = totals[domain]
        totals[domain] += counts[domain, index]
    return offsets, totals


def _split_bits(t: _Tokenised, first_doc: int, val_every: int) -> list[int]:
    """The split bit of each document of ``t``."""
    return [splits.split_bit(first_doc + i, val_every) for i in range(len(t.ids))]


def _split_tokens(t: _Tokenised, doc_offsets: dict[tuple[int, int], int], val_every: int) -> list[int]:
    lengths = [0] * len(SPLITS)
    for bit, ids in zip(_split_bits(t, doc_offsets[t.domain, t.index], val_every), t.ids):
        lengths[bit] += len(ids) + 1
    return lengths


def _token_offsets(lengths: dict[tuple[int, int], list[int]]) -> tuple[dict[tuple[int, int, int], int],
                                                                        dict[tuple[int, int], int]]:
    """Each ``(domain, split bit, unit)``'s offset in its split's concatenation, and each split's total."""
    offsets, totals = {}, {}
    for domain, index in sorted(lengths):
        for bit, n in enumerate(lengths[domain, index]):
            offsets[domain, bit, index] = totals.get((domain, bit), 0)
            totals[domain, bit] = offsets[domain, bit, index] + n
    return offsets, totals


def _pieces(t: _Tokenised, doc_offsets: dict[tuple[int, int], int], token_offsets: dict[tuple[int, int, int], int],
            val_every: int, seq_len: int, eos_id: int) -> list[tuple[tuple[int, int, int], Piece]]:
    first = doc_offsets[t.domain, t.index]
    bits = _split_bits(t, first, val_every)
    out = []
    for bit in range(len(SPLITS)):
        docs = [(first + i, ids) for i, (b, ids) in enumerate(zip(bits, t.ids)) if b == bit]
        for piece in cut_pieces(docs, token_offsets[t.domain, bit, t.index], seq_len, eos_id):
            out.append(((t.domain, bit, piece.index), piece))
    return out


def _tasks(totals: dict[tuple[int, int], int], seq_len: int, per_task: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Per stream ``(domain, split bit)``: its first write task and number of tasks."""
    tasks, first = {}, 0
    for stream in sorted(totals):
        n = math.ceil(math.ceil(totals[stream] / seq_len) / per_task)
        tasks[stream] = (first, n)
        first += n
    return tasks


def _write_task(task: int, records: Iterator[tuple[tuple[int, int, int], Piece]], names: list[str],
                totals: dict[tuple[int, int], int], seq_len: int, out: str, local_root: str, remote: bool,
                columns: dict[str, str], dtype: Any, compression: str, hashes: list[str], size_limit: int,
                per_task: int) -> Iterator[dict[str, Any]]:
    """Join and write one range of one stream's sequences as a part of the stream; yield what the driver merges."""
    ordered = sorted(records, key=lambda kv: (kv[0], kv[1].start))
    if not ordered:
        return
    domain, bit, first = ordered[0][0]
    stream, split, part = (domain, bit), SPLITS[bit], first // per_task
    sequences = [(key[2], join_pieces(p for _, p in group)) for key, group in groupby(ordered, key=lambda kv: kv[0])]
    expected = range(part * per_task, min((part + 1) * per_task, math.ceil(totals[stream] / seq_len)))
    lengths = [len(tokens) for _, (tokens, _) in sequences]
    if ({key[:2] for key, _ in ordered} != {stream} or [k for k, _ in sequences] != list(expected)
            or lengths != [min(seq_len, totals[stream] - k * seq_len) for k in expected]):
        raise RuntimeError(f'write task {task} of {split}/{names[domain]} did not get the whole sequences of part {part}')
    mds = {'columns': columns, 'compression': compression, 'hashes': hashes, 'size_limit': size_limit}
    with part_writer(out, local_root, f'{split}/{names[domain]}', part, remote, **mds) as (writer, index):
        for k, (tokens, doc_ids) in sequences:
            writer.write(sample_row(tokens, make_sample_id(domain, split, k), domain, doc_ids, dtype))
    yield {'rel': f'{split}/{names[domain]}', 'part': part, 'index': index}


def _merge_indexes(written: list[dict[str, Any]], local_root: str) -> None:
    """Write each stream's ``index.json``: its parts' shards in order."""
    streams: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for part in written:
        streams.setdefault(part['rel'], []).append((part['part'], part['index']))
    for rel, parts in streams.items():
        write_merged_index(os.path.join(local_root, rel), parts)


def _infos(domains: Sequence[DomainSpec], documents: list[int], val_every: int, totals: dict[tuple[int, int], int],
           seq_len: int) -> list[DomainInfo]:
    infos = []
    for index, spec in enumerate(domains):
        infos.append(DomainInfo(
            name=spec.name, index=index, source=spec.describe(),
            documents=splits.split_documents(documents[index], val_every),
            sequences={s: math.ceil(totals[index, b] / seq_len) for b, s in enumerate(SPLITS)},
            tokens={s: totals[index, b] for b, s in enumerate(SPLITS)}))
    return infos


def _write_documents(tokenised: Any, domains: Sequence[DomainSpec], doc_offsets: dict[tuple[int, int], int],
                     val_every: int, local_root: str) -> None:
    """``documents/{domain}.parquet`` from the units in order, one partition at a time on the driver."""
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(local_root, DOCUMENTS_FOLDER), exist_ok=True)
    writers = {}
    try:
        for domain, index, sources, chars in tokenised.map(lambda t: (t.domain, t.index, t.sources, t.chars)).toLocalIterator():
            if domain not in writers:
                path = os.path.join(local_root, documents_path(domains[domain].name))
                writers[domain] = pq.ParquetWriter(path, documents_schema())
            first = doc_offsets[domain, index]
            ids = list(range(first, first + len(sources)))
            split_names = [splits.document_split(i, val_every) for i in ids]
            writers[domain].write_table(documents_table(ids, split_names, sources, chars))
    finally:
        for writer in writers.values():
            writer.close()


def _user_error(e: Exception) -> Exception:
    """An error raised in an executor reaches the driver wrapped in Spark's; unwrap reweigh's own messages."""
    if isinstance(e, (ValueError, FileNotFoundError)):
        return e
    text = str(e)
    for kind in ('ValueError', 'FileNotFoundError'):
        marker = f'\n{kind}: '
        if marker in text:
            return ValueError(text.rsplit(marker, 1)[1].splitlines()[0])
    return e
