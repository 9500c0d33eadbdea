"""The contract of a reweigh dataset's MDS shards: its columns, their encodings, and index checks.

Streaming decodes each column as the ``index.json`` next to the shards says; a ``pkl`` column would
unpickle whatever the shard holds, and a shard's file name is joined onto the local cache. So every
reader of a reweigh dataset checks each stream's index against this contract before it reads a shard:
the columns and encodings must be exactly those the dataset's manifest lists (which must be these),
shards must be MDS with a known compression, and file names must stay inside the stream's folder.
The writers (:func:`reweigh.pipeline.prepare.prepare_dataset`, :func:`reweigh.pipeline.curate.curate_dataset`)
take their columns and shard hashes from here too.

Example:
    >>> columns(vocab_size=4096)
    {'input_ids': 'ndarray:uint16', 'sample_id': 'int64', 'domain': 'int32', 'doc_ids': 'ndarray:int64'}
    >>> check_columns({'input_ids': 'ndarray:uint16', 'sample_id': 'int64', 'domain': 'int32',
    ...                'doc_ids': 'pkl'}, 'manifest.json')
    Traceback (most recent call last):
    ...
    ValueError: manifest.json: column 'doc_ids' is encoded as 'pkl'; a reweigh dataset encodes it as 'ndarray:int64'
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from reweigh.safety.names import check_relative_path

__all__ = [
    'ENCODINGS', 'HASHES', 'INDEX_VERSION', 'check_columns', 'check_index', 'columns', 'decompress', 'hash_hex',
    'is_compression', 'merge_indexes', 'read_index', 'read_sample',
]

ENCODINGS: dict[str, tuple[str, ...]] = {
    'input_ids': ('ndarray:uint16', 'ndarray:uint32'),
    'sample_id': ('int64',),
    'domain': ('int32',),
    'doc_ids': ('ndarray:int64',),
}
"""Every column of a reweigh MDS sample and the encodings it may have (none of them runs code)."""

HASHES = ['sha1', 'xxh64']
"""The hashes recorded for every shard of a prepared dataset (``MDSWriter(hashes=...)``); a curated copy keeps its source's."""

INDEX_VERSION = 2


def columns(vocab_size: int) -> dict[str, str]:
    """The columns (name -> MDS encoding) of a dataset whose tokenizer has ``vocab_size`` tokens."""
    return {'input_ids': 'ndarray:uint16' if vocab_size <= 1 << 16 else 'ndarray:uint32',
            'sample_id': 'int64', 'domain': 'int32', 'doc_ids': 'ndarray:int64'}


def check_columns(declared: Any, where: str) -> dict[str, str]:
    """Check a column mapping (a manifest's ``mds.columns``) against :data:`ENCODINGS`; return it.

    Raises:
        ValueError: Naming ``where`` and the first column that is missing, unexpected or mis-encoded.
    """
    if not isinstance(declared, Mapping):
        raise ValueError(f'{where}: the column list must map column names to encodings, got {declared!r}')
    for name in declared:
        if name not in ENCODINGS:
            raise ValueError(f'{where}: unexpected column {name!r}; a reweigh dataset has {sorted(ENCODINGS)}')
    for name, allowed in ENCODINGS.items():
        if name not in declared:
            raise ValueError(f'{where}: column {name!r} is missing; a reweigh dataset has {sorted(ENCODINGS)}')
        if declared[name] not in allowed:
            raise ValueError(f'{where}: column {name!r} is encoded as {declared[name]!r}; a reweigh dataset '
                             f'encodes it as {" or ".join(repr(a) for a in allowed)}')
    return dict(declared)


def check_index(index: Any, expected: Mapping[str, str], where: str) -> list[dict[str, Any]]:
    """Check a parsed MDS ``index.json`` against the dataset's columns ``expected``; return its shards.

    Args:
        index: The parsed JSON.
        expected: The columns the dataset's manifest declares (already checked by :func:`check_columns`).
        where: The index file's location, for messages.

    Raises:
        ValueError: For another index version, a shard that is not MDS, has other columns or encodings
            than ``expected``, an unknown compression, or a file name that would leave the stream's folder.
    """
    if not isinstance(index, dict) or index.get('version') != INDEX_VERSION or not isinstance(index.get('shards'), list):
        raise ValueError(f'{where} is not an MDS index of version {INDEX_VERSION} with a list of shards')
    shards = index['shards']
    for i, shard in enumerate(shards):
        at = f'{where}, shard {i}'
        if not isinstance(shard, dict) or shard.get('format') != 'mds':
            raise ValueError(f'{at}: not an MDS shard (format {shard.get("format") if isinstance(shard, dict) else shard!r})')
        names, encodings = shard.get('column_names'), shard.get('column_encodings')
        if not isinstance(names, list) or not isinstance(encodings, list) or len(names) != len(encodings):
            raise ValueError(f'{at}: column_names and column_encodings must be lists of the same length')
        declared = dict(zip(names, encodings))
        for name, encoding in declared.items():
            if name not in expected:
                raise ValueError(f'{at}: unexpected column {name!r}; the dataset has {sorted(expected)}')
            if encoding != expected[name]:
                raise ValueError(f'{at}: column {name!r} is encoded as {encoding!r}, but the dataset declares '
                                 f'{expected[name]!r}; refusing to decode it')
        missing = sorted(set(expected) - set(declared))
        if missing or len(declared) != len(names):
            raise ValueError(f'{at}: column(s) {missing or names} missing or repeated; the dataset has {sorted(expected)}')
        compression = shard.get('compression')
        if compression is not None and not is_compression(compression):
            raise ValueError(f'{at}: unknown compression {compression!r}')
        for key in ('raw_data', 'zip_data'):
            data = shard.get(key)
            if data is None and key == 'zip_data':
                continue
            if not isinstance(data, dict):
                raise ValueError(f'{at}: {key} must describe a file')
            check_relative_path(f'{at}: {key} file name', data.get('basename'))
        if compression is not None and shard.get('zip_data') is None:
            raise ValueError(f'{at}: compressed with {compression!r} but names no compressed file')
        samples = shard.get('samples')
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f'{at}: samples must be a count, got {samples!r}')
    return shards


def merge_indexes(parts: list[tuple[str, Any]]) -> dict[str, Any]:
    """One MDS index of several MDS folders written side by side in a stream's folder, in the order given.

    Each shard's file names get its folder's name in front, as Streaming's ``merge_index`` does, so readers
    find ``{stream}/{folder}/shard.00000.mds.zstd``; the samples of the first folder come first.

    Args:
        parts: ``(folder name, parsed index.json)`` of each folder.

    Example:
        >>> shard = {'raw_data': {'basename': 'shard.00000.mds'}, 'zip_data': None, 'samples': 2}
        >>> merged = merge_indexes([('00000', {'version': 2, 'shards': [shard]}),
        ...                         ('00001', {'version': 2, 'shards': [shard]})])
        >>> [s['raw_data']['basename'] for s in merged['shards']]
        ['00000/shard.00000.mds', '00001/shard.00000.mds']
    """
    merged = []
    for folder, index in parts:
        for shard in index['shards']:
            shard = dict(shard)
            for key in ('raw_data', 'zip_data', 'raw_meta', 'zip_meta'):
                if shard.get(key):
                    shard[key] = {**shard[key], 'basename': f'{folder}/{shard[key]["basename"]}'}
            merged.append(shard)
    return {'version': INDEX_VERSION, 'shards': merged}


def read_index(path: str, expected: Mapping[str, str], where: str | None = None) -> list[dict[str, Any]]:
    """Read and :func:`check_index` the local ``index.json`` at ``path``; return its shards.

    Raises:
        ValueError: If it cannot be read, does not parse as JSON, or breaks the contract.
    """
    where = where or path
    try:
        with open(path, encoding='utf-8') as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{where} cannot be read as an MDS index: {e}') from e
    return check_index(index, expected, where)


# Reading. Streaming itself cannot be imported without torch and transformers (seconds), which
# `reweigh analyze` must not pay to show a few samples' text; these few functions read the columns of this
# contract from Streaming's MDS layout. tests/test_pipeline_prepare.py checks them against Streaming's own
# reader on every sample of a prepared dataset, so the two cannot drift apart.

_CODECS = {'br': 'brotli', 'bz2': 'bz2', 'gz': 'gzip', 'snappy': 'snappy', 'zstd': 'zstd'}
"""Streaming's compression names and the module whose ``decompress`` reads them."""


def is_compression(name: str) -> bool:
    """Whether ``name`` is one of Streaming's compressions (``zstd``, ``zstd:7``, ``gz``, ``br``, ``bz2``, ``snappy``)."""
    base, _, level = str(name).partition(':')
    return base in _CODECS and (not level or (level.isdigit() and base != 'snappy'))


def decompress(name: str, data: bytes) -> bytes:
    """Decompress a shard written with Streaming's compression ``name``."""
    return importlib.import_module(_CODECS[name.partition(':')[0]]).decompress(data)


def hash_hex(algo: str, data: bytes) -> str:
    """The hex digest Streaming records for ``algo`` (a ``hashlib`` or ``xxhash`` algorithm).

    Raises:
        ValueError: For an unknown algorithm.
    """
    if algo in hashlib.algorithms_available and not algo.startswith('shake_'):
        return hashlib.new(algo, data).hexdigest()
    import xxhash

    if algo in xxhash.algorithms_available:
        return getattr(xxhash, algo)(data).hexdigest()
    raise ValueError(f'unknown hash algorithm {algo!r}')


def _decode(encoding: str, data: bytes) -> Any:
    kind, _, dtype = encoding.partition(':')
    if kind != 'ndarray':
        return np.frombuffer(data, kind)[0]
    header = data[0]
    ndim, shape_dtype = header >> 2, np.dtype(f'uint{8 << (header % 4)}')
    shape = np.frombuffer(data, shape_dtype, count=ndim, offset=1)
    return np.frombuffer(data, dtype, offset=1 + ndim * shape_dtype.itemsize).reshape(shape)


def read_sample(raw_path: str, index: int, shard: Mapping[str, Any]) -> dict[str, Any]:
    """Sample ``index`` of the uncompressed MDS shard at ``raw_path``, whose ``index.json`` entry is ``shard``.

    Args:
        raw_path: The shard's raw (decompressed) file.
        index: The sample's position in the shard.
        shard: The shard's entry of a checked ``index.json`` (see :func:`check_index`).

    Returns:
        dict: Column name to value (numpy scalars and arrays, read-only).
    """
    with open(raw_path, 'rb') as f:
        f.seek(4 * (1 + index))
        begin, end = np.frombuffer(f.read(8), np.uint32)
        f.seek(int(begin))
        data = f.read(int(end - begin))
    names, encodings, sizes = shard['column_names'], shard['column_encodings'], shard['column_sizes']
    variable = [size is None for size in sizes]
    lengths = iter(np.frombuffer(data, np.uint32, count=sum(variable)).tolist())
    position, sample = 4 * sum(variable), {}
    for name, encoding, size in zip(names, encodings, sizes):
        size = next(lengths) if size is None else size
        sample[name] = _decode(encoding, data[position:position + size])
        position += size
    return sample
