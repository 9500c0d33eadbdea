"""Give back the shared memory a Streaming dataset holds until its process exits.

Every :class:`streaming.StreamingDataset` puts a handful of segments in ``/dev/shm`` under a numbered
prefix and keeps them, with a file descriptor for each, until the interpreter exits. Each dataset built
after it also opens, and keeps, a descriptor to every segment of the datasets still holding theirs (it
looks for a free prefix), so a process that builds datasets over and over, such as a notebook that trains
several times, a test suite or a sweep run in one process, holds a number of descriptors that grows with
the square of the datasets it built, and fails with ``OSError: [Errno 24] Too many open files``
(mosaicml/streaming#457). A training run builds four datasets (training, and one per validation domain).

:func:`close_dataset` stops the dataset's reading threads, unlinks the segments it created, closes those it
attached to, and closes what later datasets opened of them. :func:`closing_datasets` closes every
:class:`~reweigh.pipeline.ReweighStreamingDataset` built inside a block when the block ends;
:func:`reweigh.train.train` runs in one.

Only the process that built a dataset gives its memory back: in a dataloader worker (a copy) it does nothing.
Streaming's lock files in the temporary folder stay, as Streaming leaves them.

Example:
    >>> import os, tempfile
    >>> from reweigh.pipeline import ReweighStreamingDataset, prepare_default_corpus
    >>> root = tempfile.mkdtemp()
    >>> _ = prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32,
    ...                            progress=False)
    >>> before = set(os.listdir('/dev/shm'))
    >>> with closing_datasets():
    ...     dataset = ReweighStreamingDataset(root)
    ...     len(set(os.listdir('/dev/shm')) - before) > 0
    True
    >>> set(os.listdir('/dev/shm')) - before, dataset.closed
    (set(), True)
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Iterator

from streaming import StreamingDataset
from streaming.base.shared.memory import SharedMemory

__all__ = ['close_dataset', 'closing_datasets', 'track']

_scopes: list[list[StreamingDataset]] = []
"""The datasets built inside each open :func:`closing_datasets` block, innermost last. The references are strong:
a dataset that is garbage collected leaves its shared memory behind all the same."""


def track(dataset: StreamingDataset) -> None:
    """Note that this process builds ``dataset``, and have the enclosing :func:`closing_datasets` blocks close it.

    Called as the dataset's construction starts, so that what a failed construction created is given back too.
    """
    dataset._reweigh_pid = os.getpid()
    for scope in _scopes:
        scope.append(dataset)


@contextlib.contextmanager
def closing_datasets() -> Iterator[None]:
    """Close every :class:`~reweigh.pipeline.ReweighStreamingDataset` built in the block when it ends.

    Blocks nest: the innermost block around a dataset closes it. See the module's example.
    """
    scope: list[StreamingDataset] = []
    _scopes.append(scope)
    try:
        yield
    finally:
        _scopes.pop()
        datasets = [d for d in scope if not d.__dict__.get('_reweigh_closed')]
        if datasets:
            close_dataset(*datasets)


def close_dataset(*datasets: StreamingDataset) -> None:
    """Give back the shared memory of ``datasets`` now instead of at the process's exit.

    Use it once a dataset and its dataloaders are done with: their iteration stops (its threads are waited
    for) and the dataset cannot be read again. Closing a closed dataset, or one in a process other than the
    one that built it, does nothing.

    Args:
        *datasets (StreamingDataset): Datasets to close (any :class:`streaming.StreamingDataset`).
    """
    prefixes = []
    for dataset in datasets:
        state = dataset.__dict__
        if state.get('_reweigh_closed') or state.get('_reweigh_pid', os.getpid()) != os.getpid():
            continue
        if '_shm_prefix_int' not in state:  # its construction failed before it took a prefix
            continue
        if '_iterator' in state:  # stop its reading threads before their shared memory goes
            state['_iterator'].non_blocking_exit()
        if '_executor' in state:
            state['_executor'].shutdown(wait=True)
        for shm in _segments(dataset):
            _release(shm)
        dataset._reweigh_closed = True
        prefixes.append(f'{dataset._shm_prefix_int:06}_')
    if prefixes:
        # Datasets built while these were open attached to their segments to find a free prefix, and keep
        # those descriptors until exit (Streaming registers them with atexit and drops them).
        for obj in gc.get_objects():
            if (type(obj) is SharedMemory and not obj.created_shms and obj.opened_shms
                    and all(s.name.startswith(tuple(prefixes)) for s in obj.opened_shms)):
                _release(obj)


def _segments(dataset: StreamingDataset) -> list[SharedMemory]:
    """The shared memory objects of ``dataset`` itself (Streaming 0.12-0.13's attributes)."""
    state = dataset.__dict__
    found = [state.get('_locals_shm'), state.get('_resume_shm')]
    for name in ('_shard_states', '_shard_access_times'):
        found.append(getattr(state.get(name), 'shm', None))
    for name in ('_next_epoch', '_cache_usage'):
        found.append(getattr(getattr(state.get(name), 'arr', None), 'shm', None))
    found.append(getattr(getattr(state.get('_shared_barrier'), '_arr', None), 'shm', None))
    return [shm for shm in found if isinstance(shm, SharedMemory)]


def _release(shm: SharedMemory) -> None:
    """Unlink what ``shm`` created, close what it opened, and drop Streaming's exit-time hold on it."""
    shm.cleanup()
    atexit.unregister(shm.cleanup)
