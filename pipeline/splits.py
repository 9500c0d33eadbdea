"""The train/validation split of a domain's documents, as both engines of ``prepare_dataset`` apply it.

A domain's non-empty documents are numbered in reading order (``doc_id`` 0, 1, ...); document ``i`` is
held out for ``val`` when ``i % val_every == 0``, else it goes to ``train``, where ``val_every`` is
``round(1 / val_fraction)``, at least 2. So every domain of two or more documents has both splits (one
or fewer is an error, :func:`check_counts`), and the split of a document depends on its number only:
the Spark engine, which numbers the documents of many files at once, splits them as the local engine.

Example:
    >>> every = val_every(0.25)
    >>> every, [document_split(i, every) for i in range(5)]
    (4, ['val', 'train', 'train', 'train', 'val'])
    >>> split_documents(5, every)
    {'train': 3, 'val': 2}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from reweigh.pipeline.ids import SPLITS
from reweigh.pipeline.sources import DomainSpec

__all__ = ['check_counts', 'document_split', 'split_bit', 'split_documents', 'val_every']


def val_every(val_fraction: float) -> int:
    """Every how many documents one is held out for ``val``: ``round(1 / val_fraction)``, at least 2.

    Example:
        >>> val_every(0.05), val_every(0.5), val_every(0.9)
        (20, 2, 2)
    """
    return max(2, round(1 / val_fraction))


def split_bit(doc_id: int, every: int) -> int:
    """The split bit (index into :data:`~reweigh.pipeline.ids.SPLITS`) of document ``doc_id`` of a domain.

    Example:
        >>> [split_bit(i, 3) for i in range(4)]
        [1, 0, 0, 1]
    """
    return int(doc_id % every == 0)


def document_split(doc_id: int, every: int) -> str:
    """The split (``'train'`` or ``'val'``) of document ``doc_id`` of a domain.

    Example:
        >>> document_split(0, 20), document_split(1, 20)
        ('val', 'train')
    """
    return SPLITS[split_bit(doc_id, every)]


def split_documents(documents: int, every: int) -> dict[str, int]:
    """How many of a domain's ``documents`` (numbered ``0 .. documents - 1``) each split holds.

    Example:
        >>> split_documents(41, 20)
        {'train': 38, 'val': 3}
    """
    val = math.ceil(documents / every)
    return {'train': documents - val, 'val': val}


def check_counts(domains: Sequence[DomainSpec], counts: Mapping[str, int]) -> None:
    """Check that every domain has at least two non-empty documents (``counts`` by domain name).

    Raises:
        ValueError: Naming the first domain with none or one.

    Example:
        >>> check_counts([DomainSpec('notes', 'path', 's3://bucket/notes/')], {'notes': 1})
        Traceback (most recent call last):
        ...
        ValueError: domain 'notes' has a single document (s3://bucket/notes/); a train/val split needs at least 2 ...
    """
    for spec in domains:
        if counts[spec.name] == 0:
            raise ValueError(f'domain {spec.name!r} is empty: {spec.describe()} has no non-empty documents')
        if counts[spec.name] == 1:
            raise ValueError(f'domain {spec.name!r} has a single document ({spec.describe()}); '
                             'a train/val split needs at least 2 (give a folder or JSONL with more documents)')
