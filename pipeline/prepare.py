"""``prepare_dataset``: documents -> tokenizer -> packed sequences -> compressed MDS shards (local or remote).

Each domain's documents are numbered in reading order; document ``i`` goes to the held-out ``val`` split
when ``i % val_every == 0`` (``val_every = round(1 / val_fraction)``, so every domain with two or more
documents has both splits), else to ``train`` (:mod:`reweigh.pipeline.splits`). Within a split, documents
are tokenised (:mod:`reweigh.pipeline.encode`), followed by EOS, and packed into sequences of ``seq_len``
tokens (see :mod:`reweigh.pipeline.packing`), written as one MDS stream per split and domain (layout:
:mod:`reweigh.pipeline.manifest`; rows: :mod:`reweigh.pipeline.rows`), through one
:mod:`~reweigh.pipeline.transaction` (the manifest last; nothing left behind by a failure).

With ``engine='spark'`` the same dataset is made by a Spark cluster (or ``local[*]``): see
:mod:`reweigh.pipeline.spark_prepare` for how, and for how sample ids stay those of the local engine.

Re-running with the same inputs and settings finds the complete dataset (same fingerprint in its
manifest) and does nothing; an output holding anything else is an error unless ``overwrite=True``.

Example:
    >>> import tempfile
    >>> from reweigh.pipeline.corpus import default_corpus
    >>> out = tempfile.mkdtemp()
    >>> result = prepare_dataset(default_corpus(max_bytes_per_domain=30_000), out, vocab_size=500,
    ...                          seq_len=64, progress=False)
    >>> result.manifest.domain_names, result.skipped
    (['code', 'docs', 'boilerplate'], False)
    >>> prepare_dataset(default_corpus(max_bytes_per_domain=30_000), out, vocab_size=500, seq_len=64,
    ...                 progress=False).skipped
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from reweigh.pipeline import shards, splits
from reweigh.pipeline.corpus import default_corpus
from reweigh.pipeline.encode import encode_documents, non_empty
from reweigh.pipeline.engines import check_engine, start_engine
from reweigh.pipeline.ids import SPLITS, make_sample_id
from reweigh.pipeline.manifest import FORMAT_VERSION, DomainInfo, Manifest
from reweigh.pipeline.packing import SequencePacker
from reweigh.pipeline.rows import DOCUMENTS_FOLDER, documents_path, documents_table, sample_row, token_dtype
from reweigh.pipeline.shards import HASHES
from reweigh.pipeline.sources import DomainSpec, iter_documents
from reweigh.pipeline.tokenizer import load_tokenizer, train_bpe_tokenizer
from reweigh.pipeline.transaction import DatasetWrite, dataset_write

__all__ = ['PrepareResult', 'prepare_dataset', 'prepare_default_corpus']


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` did.

    Attributes:
        manifest (Manifest): The dataset's manifest.
        skipped (bool): True when the output already held this dataset and nothing was written.
        seconds (float): Wall time of the call.
        tokens (int): Tokens written (all domains and splits; 0 when skipped).
    """

    manifest: Manifest
    skipped: bool
    seconds: float
    tokens: int


def prepare_dataset(
    domains: Sequence[DomainSpec],
    out: str | os.PathLike,
    *,
    tokenizer: str | None = None,
    vocab_size: int = 4096,
    seq_len: int = 256,
    val_fraction: float = 0.05,
    compression: str = 'zstd',
    shard_size_limit: int = 1 << 24,
    overwrite: bool = False,
    progress: bool | None = None,
    source: str = '',
    engine: str = 'local',
    spark_master: str | None = None,
    tokenizer_sample_bytes: int = 1 << 28,
    sequences_per_task: int | None = None,
) -> PrepareResult:
    """Tokenise and pack ``domains`` into MDS shards under ``out`` (a local folder or a remote URI).

    Args:
        domains (Sequence[DomainSpec]): The named inputs; their order gives the domain indices.
        out (str | PathLike): Dataset root: a local folder, or ``s3://``, ``gs://``, ... (any remote
            ``streaming.MDSWriter`` supports; S3-compatible stores honour ``S3_ENDPOINT_URL``).
        tokenizer (str, optional): Hugging Face tokenizer name or local folder. Default: train a byte-level
            BPE with ``vocab_size`` tokens on the corpus itself. Either way it is stored in ``out/tokenizer``.
        vocab_size (int): Vocabulary size of the trained tokenizer.
        seq_len (int): Tokens per packed sequence.
        val_fraction (float): Share of each domain's documents held out for ``val``, in ``(0, 0.5]``.
        compression (str): Shard compression (a ``streaming`` codec, e.g. ``zstd``).
        shard_size_limit (int): Bytes of uncompressed samples per shard.
        overwrite (bool): Replace whatever ``out`` holds.
        progress (bool, optional): Show progress bars; default: when stderr is a terminal.
        source (str): Free-text description of the corpus, stored in the manifest.
        engine (str): ``'local'`` (this process) or ``'spark'`` (Spark executors; needs ``reweigh[spark]``).
            Both write the same sequences with the same sample ids.
        spark_master (str, optional): Spark master URL for ``engine='spark'`` (default ``local[*]``, or the
            active session's).
        tokenizer_sample_bytes (int): With ``engine='spark'`` and no ``tokenizer``: the BPE is trained on
            the driver on each domain's first documents, until this many bytes of text (the local engine
            trains on everything).
        sequences_per_task (int, optional): With ``engine='spark'``: sequences per write task (default:
            about two shards' worth).

    Returns:
        PrepareResult: The manifest and whether the work was skipped.

    Raises:
        FileNotFoundError: If an input does not exist.
        ValueError: For an unreadable input, an empty domain, an unknown tokenizer, an unreachable or
            unwritable remote, an output holding another dataset without ``overwrite``, or an unknown
            engine (or, for ``'spark'``, no pyspark or Java).
    """
    start = time.perf_counter()
    out = str(out)
    if not domains:
        raise ValueError('no domains given')
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError(f'domain names must be unique, got {names}')
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f'val_fraction must be in (0, 0.5], got {val_fraction}')
    if seq_len < 2:
        raise ValueError(f'seq_len must be at least 2, got {seq_len}')
    check_engine(engine)
    sample_bytes = tokenizer_sample_bytes if engine == 'spark' and tokenizer is None else None
    progress = sys.stderr.isatty() if progress is None else progress
    val_every = splits.val_every(val_fraction)
    config = {'tokenizer': tokenizer, 'vocab_size': None if tokenizer else vocab_size, 'seq_len': seq_len,
              'val_fraction': val_fraction, 'val_every': val_every, 'compression': compression,
              'hashes': HASHES, 'shard_size_limit': shard_size_limit}
    if sample_bytes is not None:
        config['tokenizer_sample_bytes'] = sample_bytes
    fingerprint = hashlib.sha256(json.dumps(
        {'format_version': FORMAT_VERSION, 'config': config, 'domains': [d.fingerprint() for d in domains]},
        sort_keys=True, default=str).encode()).hexdigest()

    with dataset_write(out, 'reweigh-prepare-') as write:
        existing = write.existing()
        if existing is not None and existing.fingerprint == fingerprint and not overwrite:
            print(f'{out} already holds this dataset (fingerprint {fingerprint[:12]}); nothing to do.',
                  file=sys.stderr)
            return PrepareResult(existing, True, time.perf_counter() - start, 0)
        spark = start_engine(engine, spark_master, progress=progress, app_name='reweigh prepare')
        write.claim(existing, overwrite)
        tok = _get_tokenizer(tokenizer, domains, vocab_size, progress, sample_bytes)
        tokenizer_dir = os.path.join(write.root, 'tokenizer')
        tok.save_pretrained(tokenizer_dir)
        columns = shards.columns(len(tok))
        if spark is not None:
            from reweigh.pipeline.spark_prepare import write_domains

            infos = write_domains(spark, domains, tokenizer_dir, tok.eos_token_id, seq_len, val_every, write.out,
                                  write.root, write.remote, columns, compression, HASHES, shard_size_limit,
                                  sequences_per_task)
        else:
            os.makedirs(os.path.join(write.root, DOCUMENTS_FOLDER), exist_ok=True)
            infos = [_write_domain(spec, index, tok, columns, seq_len, val_every, write, compression, shard_size_limit,
                                   progress) for index, spec in enumerate(domains)]
        manifest = Manifest(
            seq_len=seq_len, domains=infos, fingerprint=fingerprint, source=source,
            config={**config, 'engine': engine},
            tokenizer={'path': 'tokenizer', 'source': tokenizer or 'byte-level BPE trained on this corpus',
                       'vocab_size': len(tok), 'eos_token_id': tok.eos_token_id,
                       'pad_token_id': tok.pad_token_id, 'eos_token': tok.eos_token,
                       'files': sorted(os.listdir(tokenizer_dir))},
            mds={'compression': compression, 'hashes': HASHES, 'layout': '{split}/{domain}', 'columns': columns},
        )
        write.commit(manifest)
    tokens = sum(sum(d.tokens.values()) for d in infos)
    return PrepareResult(manifest, False, time.perf_counter() - start, tokens)


def prepare_default_corpus(out: str | os.PathLike, *, max_bytes_per_domain: int = 600_000,
                           max_doc_chars: int = 12_000, vocab_size: int = 4096, seq_len: int = 256,
                           **kwargs: Any) -> PrepareResult:
    """:func:`prepare_dataset` on the embedded default corpus (:func:`~reweigh.pipeline.corpus.default_corpus`).

    With the defaults: three domains of ~0.6 MB of text each, a 4096-token BPE, ~2500 sequences of 256
    tokens. ``kwargs`` go to :func:`prepare_dataset`.
    """
    domains = default_corpus(max_bytes_per_domain=max_bytes_per_domain, max_doc_chars=max_doc_chars)
    source = 'reweigh default corpus: ' + '; '.join(f'{d.name} = {d.location.split(": ", 1)[1]}' for d in domains)
    return prepare_dataset(domains, out, vocab_size=vocab_size, seq_len=seq_len, source=source, **kwargs)


def _get_tokenizer(name: str | None, domains: Sequence[DomainSpec], vocab_size: int, progress: bool,
                   sample_bytes: int | None = None):
    """Load ``name``, or train a BPE on every domain's documents (or each one's first ``sample_bytes``)."""
    if name is not None:
        return load_tokenizer(name)
    counts = {d.name: 0 for d in domains}

    def texts() -> Iterator[str]:
        for spec in domains:
            used = 0
            for doc in non_empty(tqdm(iter_documents(spec), desc=f'tokenizer: reading {spec.name}', unit='doc',
                                      disable=not progress)):
                if sample_bytes is not None and used >= sample_bytes:
                    break
                counts[spec.name] += 1
                used += len(doc.text.encode('utf-8'))
                yield doc.text

    tok = train_bpe_tokenizer(texts(), vocab_size=vocab_size)
    if sample_bytes is None:  # a sample does not count every document; the engine checks them
        splits.check_counts(domains, counts)
    return tok


def _write_domain(spec: DomainSpec, index: int, tok: Any, columns: dict[str, str], seq_len: int, val_every: int,
                  write: DatasetWrite, compression: str, shard_size_limit: int, progress: bool) -> DomainInfo:
    import pyarrow.parquet as pq

    dtype = token_dtype(columns)
    info = DomainInfo(name=spec.name, index=index, source=spec.describe(),
                      documents={s: 0 for s in SPLITS}, sequences={s: 0 for s in SPLITS}, tokens={s: 0 for s in SPLITS})
    packers = {s: SequencePacker(seq_len, tok.eos_token_id) for s in SPLITS}
    table: dict[str, list] = {'doc_ids': [], 'splits': [], 'sources': [], 'chars': []}
    mds = {'columns': columns, 'compression': compression, 'hashes': HASHES, 'size_limit': shard_size_limit,
           'progress_bar': progress}
    with ExitStack() as streams:
        writers = {split: streams.enter_context(write.stream(info.path(split), **mds)) for split in SPLITS}

        def write_sequences(split: str, sequences: list) -> None:
            for seq, doc_ids in sequences:
                sid = make_sample_id(index, split, info.sequences[split])
                writers[split].write(sample_row(seq, sid, index, doc_ids, dtype))
                info.sequences[split] += 1
                info.tokens[split] += len(seq)

        bar = tqdm(desc=f'prepare: {spec.name}', unit='doc', disable=not progress)
        for batch, encoded in encode_documents(tok, iter_documents(spec)):
            for doc, ids in zip(batch, encoded):
                doc_id = len(table['doc_ids'])
                split = splits.document_split(doc_id, val_every)
                write_sequences(split, packers[split].add(doc_id, ids))
                info.documents[split] += 1
                for key, value in (('doc_ids', doc_id), ('splits', split), ('sources', doc.source), ('chars', len(doc.text))):
                    table[key].append(value)
            bar.update(len(batch))
        bar.close()
        for split in SPLITS:
            write_sequences(split, packers[split].finish())
        splits.check_counts([spec], {spec.name: len(table['doc_ids'])})
    pq.write_table(documents_table(**table), os.path.join(write.root, documents_path(spec.name)))
    return info
