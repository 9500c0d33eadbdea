"""The rows of a prepared dataset: one MDS sample per packed sequence, one documents-table row per document.

Every writer of samples (both engines of ``prepare_dataset`` and of ``curate_dataset``) makes them with
:func:`sample_row`, its tokens in :func:`token_dtype` of the dataset's columns
(:func:`reweigh.pipeline.shards.columns`). Both engines of ``prepare_dataset`` write each domain's
``documents/{domain}.parquet`` (:func:`documents_path`) from :func:`documents_table`, in
:func:`documents_schema`.

Example:
    >>> from reweigh.pipeline.shards import columns
    >>> dtype = token_dtype(columns(vocab_size=4096))
    >>> row = sample_row([5, 6, 0], sample_id=7, domain=0, doc_ids=[3], dtype=dtype)
    >>> row['input_ids'].dtype, row['doc_ids'].tolist(), sorted(row) == sorted(columns(vocab_size=4096))
    (dtype('uint16'), [3], True)
    >>> documents_table([0, 1], ['val', 'train'], ['a.txt', 'b.txt'], [10, 20]).to_pylist()[0]
    {'doc_id': 0, 'split': 'val', 'source': 'a.txt', 'chars': 10}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ['DOCUMENTS_FOLDER', 'documents_path', 'documents_schema', 'documents_table', 'sample_row', 'token_dtype']

DOCUMENTS_FOLDER = 'documents'
"""Folder of the documents tables, under the dataset root."""


def token_dtype(columns: Mapping[str, str]) -> np.dtype:
    """The numpy dtype of ``input_ids`` in a dataset with these MDS ``columns``.

    Example:
        >>> token_dtype({'input_ids': 'ndarray:uint32'})
        dtype('uint32')
    """
    return np.dtype(np.uint16 if columns['input_ids'] == 'ndarray:uint16' else np.uint32)


def sample_row(tokens: ArrayLike, sample_id: int, domain: int, doc_ids: ArrayLike, dtype: np.dtype) -> dict[str, Any]:
    """One MDS sample: a sequence's ``tokens`` (as ``dtype``), its sample id, domain index and source documents.

    Example:
        >>> row = sample_row(np.array([1, 2]), 5, 1, [0, 1], np.dtype('uint16'))
        >>> row['input_ids'].dtype, row['sample_id'], row['domain'], row['doc_ids'].dtype
        (dtype('uint16'), 5, 1, dtype('int64'))
    """
    return {'input_ids': np.asarray(tokens, dtype=dtype), 'sample_id': int(sample_id), 'domain': int(domain),
            'doc_ids': np.asarray(doc_ids, dtype=np.int64)}


def documents_path(domain: str) -> str:
    """The documents table of ``domain``, relative to the dataset root.

    Example:
        >>> documents_path('code')
        'documents/code.parquet'
    """
    return f'{DOCUMENTS_FOLDER}/{domain}.parquet'


def documents_schema() -> pa.Schema:
    """The columns of a documents table: ``doc_id``, ``split``, ``source``, ``chars`` (the text's length).

    Example:
        >>> documents_schema().names
        ['doc_id', 'split', 'source', 'chars']
    """
    import pyarrow as pa

    return pa.schema([('doc_id', pa.int64()), ('split', pa.string()), ('source', pa.string()), ('chars', pa.int64())])


def documents_table(doc_ids: Sequence[int], splits: Sequence[str], sources: Sequence[str], chars: Sequence[int]) -> pa.Table:
    """Rows of a documents table: each document's id, split, source and length in characters.

    Example:
        >>> documents_table([4], ['train'], ['notes.txt'], [12]).num_rows
        1
    """
    import pyarrow as pa

    return pa.table({'doc_id': doc_ids, 'split': splits, 'source': sources, 'chars': chars}, schema=documents_schema())
