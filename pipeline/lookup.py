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

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reweigh.io import objects, uri
from reweigh.io.local import write_atomically
from reweigh.pipeline.ids import decode_sample_ids, make_sample_id, sample_id_domains, split_sample_id
from reweigh.pipeline.manifest import CURATION_FOLDER, Manifest, read_manifest
from reweigh.pipeline.shards import decompress, hash_hex, read_index, read_sample

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
        self._remote = uri.is_remote(self.root)
        if self._remote and cache is None:
            cache = tempfile.mkdtemp(prefix='reweigh-lookup-')
        self._base = str(cache) if self._remote else self.root
        self.manifest: Manifest = read_manifest(self.root, cache)
        self._names = np.array(self.manifest.domain_names, dtype=object)
        self._indexes: dict[str, list[dict[str, Any]]] = {}
        self._documents: dict[str, dict[int, dict[str, Any]]] = {}
        self._tokenizer = None
        self._decode = None
        self._kept: dict[str, NDArray[np.int64]] = {}

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
        return self._decoder()(self.tokens(sample_id).tolist())

    def _decoder(self):
        """``decode`` of the dataset's tokenizer: straight from ``tokenizer.json`` with the ``tokenizers`` library
        when that gives what ``transformers`` would (no clean-up of spaces), which spares importing
        ``transformers`` (seconds); else the ``transformers`` tokenizer's."""
        if self._decode is None:
            files = self.manifest.tokenizer.get('files', [])
            if 'tokenizer.json' in files and 'tokenizer_config.json' in files:
                rel = self.manifest.tokenizer['path']
                with open(self.fetch(f'{rel}/tokenizer_config.json'), encoding='utf-8') as f:
                    config = json.load(f)
                if not config.get('clean_up_tokenization_spaces', False):
                    from tokenizers import Tokenizer

                    fast = Tokenizer.from_file(self.fetch(f'{rel}/tokenizer.json'))
                    self._decode = lambda ids: fast.decode(ids, skip_special_tokens=False)
            if self._decode is None:
                self._decode = self.tokenizer.decode
        return self._decode

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
                        objects.download(uri.join(self.root, rel, name), local)
            self._tokenizer = load_tokenizer(os.path.join(self._base, rel))
        return self._tokenizer

    def samples(self, domain: str, split: str = 'train') -> Iterator[dict[str, Any]]:
        """Every sample of ``split/domain`` in stored order, one shard in memory at a time.

        Yields dicts with ``input_ids``, ``sample_id``, ``domain`` and ``doc_ids`` (numpy values).
        """
        rel = self.manifest.domain(domain).path(split)
        for shard in self.shards(rel):
            yield from self.shard_samples(rel, shard)

    def shard_samples(self, rel: str, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every sample of one shard (an entry of :meth:`shards`) of stream ``rel``, in stored order."""
        raw = self._raw_shard(rel, shard)
        for i in range(shard['samples']):
            yield read_sample(raw, i, shard)

    def _position(self, domain: int, split: str, index: int) -> int:
        """Where sequence ``index`` of ``split`` is stored: its index, or in a curated dataset its rank among
        the kept ones (``curation/{domain}.parquet`` lists them in stored order)."""
        curation = self.manifest.curation
        if curation is None or split != 'train':
            return index
        name = str(self._names[domain])
        if name not in self._kept:
            import pyarrow.parquet as pq

            ids = pq.read_table(self.fetch(f'{CURATION_FOLDER}/{name}.parquet'))['sample_id'].to_numpy()
            self._kept[name] = decode_sample_ids(ids)[2]
        kept = self._kept[name]
        position = int(np.searchsorted(kept, index))
        if position >= len(kept) or kept[position] != index:
            raise KeyError(f'sample {make_sample_id(domain, split, index)} was dropped when {self.root} was curated')
        return position

    def _sample(self, sample_id: int) -> dict[str, Any]:
        domain, split, index = split_sample_id(sample_id)
        if domain >= len(self._names):
            raise KeyError(f'sample id {sample_id} names domain {domain}; {self.root} has {len(self._names)}')
        rel = self.manifest.domain(str(self._names[domain])).path(split)
        shards = self.shards(rel)
        position = self._position(domain, split, index)
        for shard in shards:
            if position < shard['samples']:
                obj = read_sample(self._raw_shard(rel, shard), position, shard)
                break
            position -= shard['samples']
        else:
            total = sum(shard['samples'] for shard in shards)
            raise KeyError(f'sample id {sample_id}: {split}/{self._names[domain]} has only {total} sequences')
        if int(obj['sample_id']) != int(sample_id):
            raise ValueError(f'{self.root} is inconsistent: {split}/{self._names[domain]} holds sample id '
                             f'{int(obj["sample_id"])} where {sample_id} belongs')
        return obj

    def shards(self, rel: str) -> list[dict[str, Any]]:
        """The checked shard entries of the ``index.json`` of stream ``rel`` (e.g. ``train/code``)."""
        if rel not in self._indexes:
            where = uri.join(self.root, rel, 'index.json')
            self._indexes[rel] = read_index(self.fetch(f'{rel}/index.json'), self.manifest.mds['columns'], where)
        return self._indexes[rel]

    def fetch(self, rel: str) -> str:
        """A local path of the dataset's file ``rel``: the file itself, or a cached download for a remote root."""
        local = os.path.join(self._base, rel)
        if self._remote and not os.path.exists(local):
            objects.download(uri.join(self.root, rel), local)
        return local

    def _raw_shard(self, rel: str, shard: dict[str, Any]) -> str:
        """The shard's raw file, decompressed (hashes checked) on first use: in place for a local root, as
        Streaming does, or in the cache for a remote one."""
        raw = os.path.join(self._base, rel, shard['raw_data']['basename'])
        zipped = shard.get('zip_data')
        if os.path.exists(raw) or not zipped:
            return raw if os.path.exists(raw) else self.fetch(f'{rel}/{shard["raw_data"]["basename"]}')
        path = self.fetch(f'{rel}/{zipped["basename"]}')
        with open(path, 'rb') as f:
            data = f.read()
        for algo, expected in zipped.get('hashes', {}).items():
            if hash_hex(algo, data) != expected:
                raise ValueError(f'Checksum failure: {path} ({algo}); the shard is corrupted')
        write_atomically(raw, decompress(shard['compression'], data))
        return raw

    def _document_table(self, domain: str) -> dict[int, dict[str, Any]]:
        if domain not in self._documents:
            import pyarrow.parquet as pq

            rows = pq.read_table(self.fetch(f'documents/{domain}.parquet')).to_pylist()
            self._documents[domain] = {row['doc_id']: row for row in rows}
        return self._documents[domain]
