"""The sample-id scheme: one stable ``int64`` per packed sequence, unique across domains and splits.

A sample id is ``(domain_index << 48) | (split_bit << 47) | sequence_index``: the domain's index in the
manifest in bits 48-62 (up to 32768 domains), the split in bit 47 (``0`` train, ``1`` val) and the
sequence's position in its domain's split in bits 0-46. It is written into every shard at prepare
time, so it does not depend on shuffling, mixing, or the number of ranks and workers that read it.

Every reader decodes ids here: one at a time with :func:`split_sample_id`, many at once with
:func:`decode_sample_ids` (or only their domains, :func:`sample_id_domains`).

Example:
    >>> sid = make_sample_id(2, 'val', 5)
    >>> split_sample_id(sid)
    (2, 'val', 5)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ['DOMAIN_SHIFT', 'SPLITS', 'SPLIT_SHIFT', 'decode_sample_ids', 'make_sample_id', 'sample_id_domains', 'split_sample_id']

SPLITS: tuple[str, ...] = ('train', 'val')
"""Split names, in the order of their split bit."""
DOMAIN_SHIFT = 48
SPLIT_SHIFT = 47
_MAX_DOMAINS = 1 << (63 - DOMAIN_SHIFT)
_MAX_INDEX = 1 << SPLIT_SHIFT
_INDEX_MASK = _MAX_INDEX - 1


def make_sample_id(domain_index: int, split: str, sequence_index: int) -> int:
    """The sample id of sequence ``sequence_index`` of ``split`` in domain ``domain_index``.

    Args:
        domain_index (int): The domain's index in the manifest, ``0 <= domain_index < 32768``.
        split (str): ``'train'`` or ``'val'``.
        sequence_index (int): Position of the sequence in its domain's split, ``0 <= i < 2**47``.

    Returns:
        int: The sample id, a non-negative ``int64``.

    Example:
        >>> make_sample_id(1, 'train', 3) == (1 << 48) + 3
        True
    """
    if not 0 <= domain_index < _MAX_DOMAINS:
        raise ValueError(f'domain index must be in [0, {_MAX_DOMAINS}), got {domain_index}')
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if not 0 <= sequence_index < _MAX_INDEX:
        raise ValueError(f'sequence index must be in [0, 2**47), got {sequence_index}')
    return (domain_index << DOMAIN_SHIFT) | (SPLITS.index(split) << SPLIT_SHIFT) | sequence_index


def split_sample_id(sample_id: int) -> tuple[int, str, int]:
    """``(domain_index, split, sequence_index)`` of one sample id; the inverse of :func:`make_sample_id`.

    Example:
        >>> split_sample_id((3 << 48) | (1 << 47) | 9)
        (3, 'val', 9)
    """
    sample_id = int(sample_id)
    if sample_id < 0:
        raise ValueError(f'sample ids are non-negative, got {sample_id}')
    return sample_id >> DOMAIN_SHIFT, SPLITS[(sample_id >> SPLIT_SHIFT) & 1], sample_id & _INDEX_MASK


def decode_sample_ids(sample_ids: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``(domain_index, split_bit, sequence_index)`` arrays of many sample ids at once (vectorised).

    The inverse of :func:`make_sample_id` for each id: the split as its bit, an index into :data:`SPLITS`.
    Ids are not checked (a negative one decodes to a negative domain).

    Args:
        sample_ids (ArrayLike): Sample ids, any shape.

    Returns:
        tuple[NDArray, NDArray, NDArray]: Domain indices, split bits and sequence indices, ``int64``, the
        shape of ``sample_ids``.

    Example:
        >>> domain, split, index = decode_sample_ids([make_sample_id(0, 'train', 7), make_sample_id(4, 'val', 0)])
        >>> domain.tolist(), [SPLITS[b] for b in split], index.tolist()
        ([0, 4], ['train', 'val'], [7, 0])
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    return ids >> DOMAIN_SHIFT, (ids >> SPLIT_SHIFT) & 1, ids & _INDEX_MASK


def sample_id_domains(sample_ids: ArrayLike) -> NDArray[np.int64]:
    """The domain index of each of many sample ids at once (vectorised).

    Example:
        >>> sample_id_domains([make_sample_id(0, 'train', 7), make_sample_id(4, 'val', 0)]).tolist()
        [0, 4]
    """
    return decode_sample_ids(sample_ids)[0]
