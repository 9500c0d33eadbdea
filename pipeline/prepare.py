"""``prepare_dataset``: documents -> tokenizer -> packed sequences -> compressed MDS shards (local or remote).

Each domain's documents are numbered in reading order; document ``i`` goes to the held-out ``val`` split
when ``i % val_every == 0`` (``val_every = round(1 / val_fraction)``, so every domain with two or more
documents has both splits), else to ``train``. Within a split, documents are tokenised, followed by EOS,
and packed into sequences of ``seq_len`` tokens (see :mod:`reweigh.pipeline.packing`), written as one
MDS stream per split and domain (layout: :mod:`reweigh.pipeline.manifest`).

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
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from reweigh.pipeline import shards, storage
from reweigh.pipeline.corpus import default_corpus
from reweigh.pipeline.ids import SPLITS, make_sample_id
from reweigh.pipeline.manifest import FORMAT_VERSION, MANIFEST_NAME, DomainInfo, Manifest, read_manifest
from reweigh.pipeline.packing import SequencePacker
from reweigh.pipeline.sources import Document, DomainSpec, iter_documents
from reweigh.pipeline.tokenizer import load_tokenizer, train_bpe_tokenizer

__all__ = ['ENGINES', 'PrepareResult', 'check_counts', 'prepare_dataset', 'prepare_default_corpus']

HASHES = ['sha1', 'xxh64']
ENGINES = ('local', 'spark')
"""Where the work runs: this process, or a Spark cluster."""
_ENCODE_BATCH = 64


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
    if engine not in ENGINES:
        raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}')
    sample_bytes = tokenizer_sample_bytes if engine == 'spark' and tokenizer is None else None
    progress = sys.stderr.isatty() if progress is None else progress
    val_every = max(2, round(1 / val_fraction))
    config = {'tokenizer': tokenizer, 'vocab_size': None if tokenizer else vocab_size, 'seq_len': seq_len,
              'val_fraction': val_fraction, 'val_every': val_every, 'compression': compression,
              'hashes': HASHES, 'shard_size_limit': shard_size_limit}
    if sample_bytes is not None:
        config['tokenizer_sample_bytes'] = sample_bytes
    fingerprint = hashlib.sha256(json.dumps(
        {'format_version': FORMAT_VERSION, 'config': config, 'domains': [d.fingerprint() for d in domains]},
        sort_keys=True, default=str).encode()).hexdigest()

    remote = storage.is_remote(out)
    with tempfile.TemporaryDirectory(prefix='reweigh-prepare-') as staging:
        existing = existing_manifest(out, staging, remote)
        if existing is not None and existing.fingerprint == fingerprint and not overwrite:
            print(f'{out} already holds this dataset (fingerprint {fingerprint[:12]}); nothing to do.',
                  file=sys.stderr)
            return PrepareResult(existing, True, time.perf_counter() - start, 0)
        spark = None
        if engine == 'spark':
            from reweigh.pipeline.spark_session import spark_session

            spark = spark_session(spark_master, progress=progress, app_name='reweigh prepare')
        created = claim_output(out, existing, overwrite, remote)
        local_root = staging if remote else out
        try:
            tok = _get_tokenizer(tokenizer, domains, vocab_size, progress, sample_bytes)
            tok.save_pretrained(os.path.join(local_root, 'tokenizer'))
            if spark is not None:
                from reweigh.pipeline.spark_prepare import write_domains

                infos = write_domains(spark, domains, os.path.join(local_root, 'tokenizer'), tok.eos_token_id,
                                      seq_len, val_every, out, local_root, remote, shards.columns(len(tok)),
                                      compression, HASHES, shard_size_limit, sequences_per_task)
            else:
                infos = []
                os.makedirs(os.path.join(local_root, 'documents'), exist_ok=True)
                for index, spec in enumerate(domains):
                    infos.append(_write_domain(spec, index, tok, seq_len, val_every, out, local_root, remote,
                                               compression, shard_size_limit, progress))
            manifest = Manifest(
                seq_len=seq_len, domains=infos, fingerprint=fingerprint, source=source,
                config={**config, 'engine': engine},
                tokenizer={'path': 'tokenizer', 'source': tokenizer or 'byte-level BPE trained on this corpus',
                           'vocab_size': len(tok), 'eos_token_id': tok.eos_token_id,
                           'pad_token_id': tok.pad_token_id, 'eos_token': tok.eos_token,
                           'files': sorted(os.listdir(os.path.join(local_root, 'tokenizer')))},
                mds={'compression': compression, 'hashes': HASHES, 'layout': '{split}/{domain}',
                     'columns': shards.columns(len(tok))},
            )
            with open(os.path.join(local_root, MANIFEST_NAME), 'w') as f:
                f.write(manifest.to_json())
            if remote:
                files = [os.path.relpath(os.path.join(d, n), staging) for d, _, ns in os.walk(staging) for n in ns]
                # The manifest goes last: it marks the dataset complete.
                files.sort(key=lambda p: p == MANIFEST_NAME)
                storage.upload(staging, out, files)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
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


def existing_manifest(out: str, staging: str, remote: bool) -> Manifest | None:
    if remote:
        storage.check_writable(out, os.path.join(staging, '.probe'))
    elif os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f'output {out!r} exists and is not a folder')
    try:
        return read_manifest(out, os.path.join(staging, '.manifest') if remote else None)
    except FileNotFoundError:
        return None
    except ValueError:
        if remote:
            raise
        return None


def claim_output(out: str, existing: Manifest | None, overwrite: bool, remote: bool) -> bool:
    """Make sure ``out`` may be written; return whether it is a fresh local folder (removed on failure)."""
    if remote:
        if existing is not None and not overwrite:
            raise ValueError(f'{out} already holds a different dataset (other inputs or settings); '
                             'pass overwrite=True (--overwrite) to replace it')
        return False
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            what = 'a different dataset (other inputs or settings)' if existing else 'other or incomplete data'
            raise ValueError(f'output folder {out} already holds {what}; pass overwrite=True (--overwrite) '
                             'to replace it, or choose an empty folder')
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    return True


def _get_tokenizer(name: str | None, domains: Sequence[DomainSpec], vocab_size: int, progress: bool,
                   sample_bytes: int | None = None):
    """Load ``name``, or train a BPE on every domain's documents (or each one's first ``sample_bytes``)."""
    if name is not None:
        return load_tokenizer(name)
    counts = {d.name: 0 for d in domains}

    def texts() -> Iterator[str]:
        for spec in domains:
            used = 0
            for doc in tqdm(iter_documents(spec), desc=f'tokenizer: reading {spec.name}', unit='doc',
                            disable=not progress):
                if sample_bytes is not None and used >= sample_bytes:
                    break
                if doc.text.strip():
                    counts[spec.name] += 1
                    used += len(doc.text.encode('utf-8'))
                    yield doc.text

    tok = train_bpe_tokenizer(texts(), vocab_size=vocab_size)
    if sample_bytes is None:  # a sample does not count every document; the engine checks them
        check_counts(domains, counts)
    return tok


def check_counts(domains: Sequence[DomainSpec], counts: dict[str, int]) -> None:
    """Check that every domain has at least two non-empty documents (``counts`` by domain name).

    Raises:
        ValueError: Naming the first domain with none or one.
    """
    for spec in domains:
        if counts[spec.name] == 0:
            raise ValueError(f'domain {spec.name!r} is empty: {spec.describe()} has no non-empty documents')
        if counts[spec.name] == 1:
            raise ValueError(f'domain {spec.name!r} has a single document ({spec.describe()}); '
                             'a train/val split needs at least 2 (give a folder or JSONL with more documents)')


def _batched(docs: Iterator[Document], n: int) -> Iterator[list[Document]]:
    while batch := list(islice(docs, n)):
        yield batch


def _write_domain(spec: DomainSpec, index: int, tok: Any, seq_len: int, val_every: int, out: str, local_root: str,
                  remote: bool, compression: str, shard_size_limit: int, progress: bool) -> DomainInfo:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from streaming import MDSWriter

    columns = shards.columns(len(tok))
    dtype = np.uint16 if columns['input_ids'] == 'ndarray:uint16' else np.uint32
    info = DomainInfo(name=spec.name, index=index, source=spec.describe(),
                      documents={s: 0 for s in SPLITS}, sequences={s: 0 for s in SPLITS}, tokens={s: 0 for s in SPLITS})
    packers = {s: SequencePacker(seq_len, tok.eos_token_id) for s in SPLITS}
    writers = {}
    for split in SPLITS:
        rel = info.path(split)
        dest: str | tuple[str, str] = os.path.join(local_root, rel)
        if remote:
            dest = (os.path.join(local_root, '.shards', rel), storage.join(out, rel))
        with storage.writing(storage.join(out, rel)):
            writers[split] = MDSWriter(out=dest, columns=columns, compression=compression, hashes=HASHES,
                                       size_limit=shard_size_limit, progress_bar=progress, exist_ok=True)

    def write(split: str, sequences: list) -> None:
        for seq, doc_ids in sequences:
            sid = make_sample_id(index, split, info.sequences[split])
            writers[split].write({'input_ids': seq.astype(dtype), 'sample_id': sid, 'domain': index,
                                  'doc_ids': np.asarray(doc_ids, dtype=np.int64)})
            info.sequences[split] += 1
            info.tokens[split] += len(seq)

    table: dict[str, list] = {'doc_id': [], 'split': [], 'source': [], 'chars': []}
    docs = (d for d in iter_documents(spec) if d.text.strip())
    bar = tqdm(desc=f'prepare: {spec.name}', unit='doc', disable=not progress)
    for batch in _batched(docs, _ENCODE_BATCH):
        encoded = tok([d.text for d in batch], add_special_tokens=False)['input_ids']
        for doc, ids in zip(batch, encoded):
            doc_id = len(table['doc_id'])
            split = 'val' if doc_id % val_every == 0 else 'train'
            write(split, packers[split].add(doc_id, ids))
            info.documents[split] += 1
            for key, value in (('doc_id', doc_id), ('split', split), ('source', doc.source), ('chars', len(doc.text))):
                table[key].append(value)
        bar.update(len(batch))
    bar.close()
    for split in SPLITS:
        write(split, packers[split].finish())
    check_counts([spec], {spec.name: len(table['doc_id'])})
    for split in SPLITS:
        with storage.writing(storage.join(out, info.path(split))):
            writers[split].finish()
    pq.write_table(pa.table({'doc_id': pa.array(table['doc_id'], pa.int64()), 'split': table['split'],
                             'source': table['source'], 'chars': pa.array(table['chars'], pa.int64())}),
                   os.path.join(local_root, 'documents', f'{spec.name}.parquet'))
    return info
