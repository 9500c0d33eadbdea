"""``SampleLookup``: from a sample id back to its tokens, text, domain and source documents.

Example:
    >>> import tempfile
    >>> from reweigh.pipeline.prepare import prepare_default_corpus
    >>> root = tempfile.mkdtemp()
    >>> _ = prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32,
    ...                            progress=False)
    >>> from reweigh.pipeline.ids import make_sample_id
    >>> lookup = SampleLookup(root)
    >>> sid = make_sample_id(2, 'train', 0)
    >>> lookup.domain(sid), lookup.documents(sid)[0]['source']
    ('boilerplate', 'stdlib:LICENSE.txt#1')
    >>> lookup.domain_names([make_sample_id(0, 'val', 1), sid]).tolist()
    ['code', 'boilerplate']
    >>> isinstance(lookup.text(sid), str)
    True
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reweigh.pipeline import storage
from reweigh.pipeline.ids import sample_id_domains, split_sample_id
from reweigh.pipeline.manifest import Manifest, read_manifest
from reweigh.pipeline.shards import read_index

__all__ = ['SampleLookup']


class SampleLookup:
    """Random access to a prepared dataset by sample id (local folder, or remote through a local cache).

    Shards are decompressed (and their hashes checked) on first use: in place for a local ``root``, as
    Streaming does, or in ``cache`` for a remote one.

    Args:
        root (str | PathLike): Dataset root.
        cache (str | PathLike, optional): Local folder for a remote ``root`` (default: a temporary folder).

    Raises:
        FileNotFoundError: If ``root`` holds no prepared dataset.
    """

    def __init__(self, root: str | os.PathLike, cache: str | os.PathLike | None = None) -> None:
        self.root = str(root)
        self._remote = storage.is_remote(self.root)
        if self._remote and cache is None:
            cache = tempfile.mkdtemp(prefix='reweigh-lookup-')
        self._base = str(cache) if self._remote else self.root
        self.manifest: Manifest = read_manifest(self.root, cache)
        self._names = np.array(self.manifest.domain_names, dtype=object)
        self._streams: dict[tuple[int, str], Any] = {}
        self._documents: dict[str, dict[int, dict[str, Any]]] = {}
        self._tokenizer = None

    @property
    def domain_names_by_index(self) -> list[str]:
        """Domain names, index ``i`` being domain ``i`` of the sample ids."""
        return list(self._names)

    def domain(self, sample_id: int) -> str:
        """Name of the domain of ``sample_id``."""
        return str(self.domain_names([sample_id])[0])

    def domain_names(self, sample_ids: ArrayLike) -> NDArray[np.object_]:
        """Domain names of many sample ids at once (vectorised; no shard is read).

        Raises:
            KeyError: If an id names a domain the dataset does not have.
        """
        index = sample_id_domains(sample_ids)
        bad = (index < 0) | (index >= len(self._names))
        if bad.any():
            raise KeyError(f'sample id {np.asarray(sample_ids).ravel()[bad.ravel()][0]} names no domain of {self.root}')
        return self._names[index]

    def tokens(self, sample_id: int) -> NDArray[np.int64]:
        """The token ids of the sample (without padding)."""
        return self._sample(sample_id)['input_ids'].astype(np.int64)

    def text(self, sample_id: int) -> str:
        """The sample's tokens decoded with the dataset's tokenizer (EOS tokens included)."""
        return self.tokenizer.decode(self.tokens(sample_id).tolist())

    def documents(self, sample_id: int) -> list[dict[str, Any]]:
        """The source documents the sample contains: dicts of ``doc_id``, ``split``, ``source``, ``chars``."""
        domain, _, _ = split_sample_id(sample_id)
        table = self._document_table(str(self._names[domain]))
        return [table[int(i)] for i in self._sample(sample_id)['doc_ids']]

    @property
    def tokenizer(self):
        """The dataset's tokenizer (``transformers``), loaded on first use."""
        if self._tokenizer is None:
            from reweigh.pipeline.tokenizer import load_tokenizer

            rel = self.manifest.tokenizer['path']
            if self._remote:
                for name in self.manifest.tokenizer['files']:
                    local = os.path.join(self._base, rel, name)
                    if not os.path.exists(local):
                        storage.download(storage.join(self.root, rel, name), local)
            self._tokenizer = load_tokenizer(os.path.join(self._base, rel))
        return self._tokenizer

    def _sample(self, sample_id: int) -> dict[str, Any]:
        domain, split, index = split_sample_id(sample_id)
        if domain >= len(self._names):
            raise KeyError(f'sample id {sample_id} names domain {domain}; {self.root} has {len(self._names)}')
        stream = self._stream(domain, split)
        if index >= stream.size:
            raise KeyError(f'sample id {sample_id}: {split}/{self._names[domain]} has only {stream.size} sequences')
        obj = stream.get_item(index)
        if int(obj['sample_id']) != int(sample_id):
            raise ValueError(f'{self.root} is inconsistent: position {index} of {split}/{self._names[domain]} '
                             f'holds sample id {int(obj["sample_id"])}, expected {sample_id}')
        return obj

    def _stream(self, domain: int, split: str):
        from streaming.base.local import LocalDataset

        key = (domain, split)
        if key not in self._streams:
            rel = self.manifest.domain(str(self._names[domain])).path(split)
            self._ensure_raw_shards(rel)
            self._streams[key] = LocalDataset(local=self._base, split=rel)
        return self._streams[key]

    def _fetch(self, rel: str) -> str:
        local = os.path.join(self._base, rel)
        if self._remote and not os.path.exists(local):
            storage.download(storage.join(self.root, rel), local)
        return local

    def _ensure_raw_shards(self, rel: str) -> None:
        from streaming.base.compression import decompress
        from streaming.base.hashing import get_hash

        where = storage.join(self.root, rel, 'index.json')
        for shard in read_index(self._fetch(f'{rel}/index.json'), self.manifest.mds['columns'], where):
            raw = os.path.join(self._base, rel, shard['raw_data']['basename'])
            zipped = shard.get('zip_data')
            if os.path.exists(raw) or not zipped:
                continue
            path = self._fetch(f'{rel}/{zipped["basename"]}')
            with open(path, 'rb') as f:
                data = f.read()
            for algo, expected in zipped.get('hashes', {}).items():
                if get_hash(algo, data) != expected:
                    raise ValueError(f'Checksum failure: {path} ({algo}); the shard is corrupted')
            with open(raw + '.tmp', 'wb') as f:
                f.write(decompress(shard['compression'], data))
            os.replace(raw + '.tmp', raw)

    def _document_table(self, domain: str) -> dict[int, dict[str, Any]]:
        if domain not in self._documents:
            import pyarrow.parquet as pq

            rows = pq.read_table(self._fetch(f'documents/{domain}.parquet')).to_pylist()
            self._documents[domain] = {row['doc_id']: row for row in rows}
        return self._documents[domain]
