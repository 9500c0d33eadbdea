"""The contract of a reweigh dataset's MDS shards: its columns, their encodings, and index checks.

Streaming decodes each column as the ``index.json`` next to the shards says; a ``pkl`` column would
unpickle whatever the shard holds, and a shard's file name is joined onto the local cache. So every
reader of a reweigh dataset checks each stream's index against this contract before it reads a shard:
the columns and encodings must be exactly those the dataset's manifest lists (which must be these),
shards must be MDS with a known compression, and file names must stay inside the stream's folder.
The writer (:func:`reweigh.pipeline.prepare.prepare_dataset`) takes its columns from here too.

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

import json
from collections.abc import Mapping
from typing import Any

from reweigh.safety.names import check_relative_path

__all__ = ['ENCODINGS', 'INDEX_VERSION', 'check_columns', 'check_index', 'columns', 'read_index']

ENCODINGS: dict[str, tuple[str, ...]] = {
    'input_ids': ('ndarray:uint16', 'ndarray:uint32'),
    'sample_id': ('int64',),
    'domain': ('int32',),
    'doc_ids': ('ndarray:int64',),
}
"""Every column of a reweigh MDS sample and the encodings it may have (none of them runs code)."""

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
    from streaming.base.compression import get_compressions

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
        if compression is not None and compression not in get_compressions():
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
