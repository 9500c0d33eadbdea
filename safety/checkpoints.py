"""Load checkpoints as data, and only those their ``latest`` pointer vouches for: a restricted unpickler, the names.

Composer 0.32.1 loads every checkpoint with ``torch.load(..., weights_only=False)``: a checkpoint is a
pickle, and a pickle may call any function while it loads (``os.system``, say). Whoever can write to a
checkpoint folder, or to the bucket behind a remote ``save_folder``, can then run code on every node
that resumes from it. Inside :func:`safe_checkpoint_loading`, every ``torch.load`` (Composer's included)
runs with ``weights_only=True``: only tensors, containers, numbers, strings and the types in
:data:`CHECKPOINT_ALLOWED_GLOBALS` can be rebuilt, and a file that names anything else is refused with
:class:`UnsafeCheckpointError` before any of it runs. The metadata file of a sharded (FSDP,
``torch.distributed.checkpoint``) checkpoint, a plain pickle in torch, is read the same way.

Which file is a checkpoint is Composer's naming (:data:`CHECKPOINT_NAME`, :func:`latest_name`): a ``latest``
pointer in a bucket that names anything else is refused (:class:`reweigh.callbacks.MirrorCheckpoints`), and a
checkpoint newer than the pointer, from a save cut short, is set aside before autoresume
(:func:`set_aside_interrupted_checkpoints`).

Example:
    >>> import tempfile, os, torch
    >>> from reweigh.safety import safe_checkpoint_loading, load_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), 'ckpt.pt')
    >>> torch.save({'state': {'model': {'w': torch.ones(2)}}}, path)
    >>> load_checkpoint(path)['state']['model']['w']
    tensor([1., 1.])
    >>> with safe_checkpoint_loading():   # wrap composer.Trainer(...) and trainer.fit() in this
    ...     torch.load(path, weights_only=False)['state']['model']['w']  # forced to weights_only=True
    tensor([1., 1.])
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    'CHECKPOINT_ALLOWED_GLOBALS',
    'CHECKPOINT_NAME',
    'UnsafeCheckpointError',
    'latest_name',
    'load_checkpoint',
    'safe_checkpoint_loading',
    'set_aside_interrupted_checkpoints',
]


def _numpy_globals() -> list[Any]:
    """numpy's array and scalar reconstructors under both module names (numpy 1 pickles name ``numpy.core``)."""
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:
        from numpy.core import multiarray  # type: ignore[no-redef]  # numpy 1

    out: list[Any] = [np.ndarray, np.dtype, (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
                      multiarray._reconstruct, (multiarray.scalar, 'numpy.core.multiarray.scalar'), multiarray.scalar]
    out += [type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDGSUV']  # numpy.dtypes.*DType
    return out


def _composer_globals() -> list[Any]:
    from composer.core.time import Time, Timestamp, TimeUnit
    from torch.torch_version import TorchVersion

    return [Time, Timestamp, TimeUnit, TorchVersion]


def _dcp_metadata_allowed(name: tuple[str, str]) -> bool:
    """Whether the ``.metadata`` pickle of a ``torch.distributed.checkpoint`` (sharded FSDP) may name ``name``."""
    module, attr = name
    if module == 'torch':
        return attr == 'Size' or isinstance(getattr(torch, attr, None), torch.dtype)
    return name in _DCP_METADATA_GLOBALS


_DCP_METADATA_GLOBALS = {
    *(('torch.distributed.checkpoint.metadata', n) for n in (
        'Metadata', 'MetadataIndex', 'ChunkStorageMetadata', 'TensorProperties', 'TensorStorageMetadata',
        'BytesStorageMetadata', 'StorageMeta', '_MEM_FORMAT_ENCODING')),
    ('torch.distributed.checkpoint.filesystem', '_StorageInfo'),
    ('torch.serialization', '_get_layout'),
    ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'), ('pathlib', 'PurePosixPath'), ('pathlib', 'PureWindowsPath'),
}
"""Everything torch 2.7 writes into a distributed checkpoint's metadata (dataclasses, dtypes, paths)."""


CHECKPOINT_ALLOWED_GLOBALS: list[Any] = [datetime.timedelta, datetime.datetime, datetime.date,
                                         *_numpy_globals(), *_composer_globals()]
"""Types and functions (besides tensors, containers and scalars, which torch always allows) that a
reweigh/Composer checkpoint holds: numpy arrays and dtypes (the RNG state), ``datetime`` values
(wall-clock times), Composer's ``Time``/``Timestamp``/``TimeUnit`` and torch's version object.
Entries are objects, or ``(object, 'module.name')`` for an object pickled under another name."""

_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')
_lock = threading.Lock()
_TORCH_LOAD = torch.load
"""torch's own loader, which the restricted one calls (inside the block ``torch.load`` is replaced)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that needs something besides data to load; nothing in it was run.

    Attributes:
        path (str): The file refused.
        refused (str): The global (``module.name``) it asked for, or ``''`` when torch named none.
    """

    def __init__(self, path: str, refused: str, reason: str = '') -> None:
        self.path, self.refused, self.reason = path, refused, reason
        what = f'it needs {refused!r}' if refused else f'it is not plain data ({reason})'
        super().__init__(
            f'refused to load checkpoint {path!r}: {what}, which is not on the allow-list of checkpoint types '
            '(reweigh.safety.CHECKPOINT_ALLOWED_GLOBALS); nothing in it was run. Only load checkpoints you '
            'trust; to accept a type of your own, pass extra_globals=[...] to safe_checkpoint_loading',
        )


def _name_of(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, 'name', '<file object>'))


def _refusal(f: Any, error: pickle.UnpicklingError) -> UnsafeCheckpointError:
    message = str(error)
    match = _GLOBAL.search(message)
    reason = next((line.strip() for line in message.splitlines()[1:] if line.strip()), message.splitlines()[0])
    return UnsafeCheckpointError(_name_of(f), match.group(1) if match else '', reason)


def load_checkpoint(f: Any, map_location: Any = 'cpu', extra_globals: Sequence[Any] = (), **kwargs: Any) -> Any:
    """``torch.load`` restricted to data: tensors, containers, scalars and :data:`CHECKPOINT_ALLOWED_GLOBALS`.

    Args:
        f: A path or a binary file object.
        map_location: As for ``torch.load``. Default: ``'cpu'``.
        extra_globals: More types to accept (your own callback's state, say), as for
            ``torch.serialization.add_safe_globals``.
        **kwargs: Other ``torch.load`` keyword arguments (``mmap``, ...); ``weights_only`` is always True.

    Returns:
        The loaded object.

    Raises:
        UnsafeCheckpointError: If the file asks for anything outside the allow-list (nothing is run).
    """
    kwargs.pop('weights_only', None)
    kwargs.pop('pickle_module', None)
    with torch.serialization.safe_globals([*CHECKPOINT_ALLOWED_GLOBALS, *extra_globals]):
        try:
            return _TORCH_LOAD(f, map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            raise _refusal(f, e) from None


def _unsafe_in(error: BaseException) -> UnsafeCheckpointError | None:
    """``error`` itself, or the refusal inside the per-rank failures of a distributed-checkpoint error."""
    if isinstance(error, UnsafeCheckpointError):
        return error
    failures = getattr(error, 'failures', None)
    if isinstance(failures, dict):
        for failure in failures.values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, UnsafeCheckpointError):
                return inner
    return None


class _MetadataUnpickler(pickle.Unpickler):
    """Python's unpickler restricted to the names a distributed checkpoint's metadata uses.

    torch reads that file with plain ``pickle.load``, and its own weights-only unpickler cannot read it
    (the file uses pickle protocol 4 or later).
    """

    def find_class(self, module: str, name: str) -> Any:
        if not _dcp_metadata_allowed((module, name)):
            raise pickle.UnpicklingError(f'\nUnsupported GLOBAL {module}.{name}')
        return super().find_class(module, name)


class _RestrictedPickle:
    """Stands in for the ``pickle`` module where torch's distributed checkpoint reads its metadata."""

    def load(self, file: Any, **_: Any) -> Any:
        try:
            return _MetadataUnpickler(file).load()
        except pickle.UnpicklingError as e:
            raise _refusal(file, e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)  # dump/dumps for saving stay as they are


@contextlib.contextmanager
def safe_checkpoint_loading(extra_globals: Sequence[Any] = ()) -> Iterator[None]:
    """Within this block every ``torch.load`` (Composer's too) loads data only, as :func:`load_checkpoint`.

    Wrap the construction of a ``composer.Trainer`` (where autoresume and ``load_path`` load) and its
    ``fit()`` in it. Callers that pass ``weights_only=False`` get ``True`` anyway. Re-entrant; the previous
    ``torch.load`` is restored on exit.

    Args:
        extra_globals: More types to accept besides :data:`CHECKPOINT_ALLOWED_GLOBALS`.

    Raises:
        UnsafeCheckpointError: From a ``torch.load`` inside the block, for a file outside the allow-list.

    Example:
        >>> import torch
        >>> from reweigh.safety import safe_checkpoint_loading
        >>> with safe_checkpoint_loading():
        ...     pass  # trainer = composer.Trainer(..., autoresume=True); trainer.fit()
        >>> torch.load.__name__
        'load'
    """
    from composer.utils import checkpoint as composer_checkpoint
    from torch.distributed.checkpoint import filesystem

    def restricted(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
        return load_checkpoint(f, map_location=map_location, extra_globals=extra_globals, **kwargs)

    with _lock:
        outer = (torch.load, filesystem.pickle, composer_checkpoint.load_checkpoint)

        def composer_load(path: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return outer[2](path, *args, **kwargs)
            except BaseException as e:  # torch.distributed.checkpoint wraps errors in a BaseException
                refusal = _unsafe_in(e)
                if refusal is None:
                    raise
                # Name the checkpoint the user gave, not the temporary copy Composer loads.
                name = f'{path} -> {os.readlink(path)}' if os.path.islink(path) else str(path)
                raise UnsafeCheckpointError(name, refusal.refused, refusal.reason) from None

        torch.load = restricted
        filesystem.pickle = _RestrictedPickle()  # type: ignore[assignment]
        composer_checkpoint.load_checkpoint = composer_load
    try:
        yield
    finally:
        with _lock:
            torch.load, filesystem.pickle, composer_checkpoint.load_checkpoint = outer


CHECKPOINT_NAME = re.compile(r'^ep(\d+)-ba(?P<batch>\d+)-rank(?P<rank>\d+)\.pt$')
"""Composer's default checkpoint file name, ``ep{epoch}-ba{batch}-rank{rank}.pt``."""


def latest_name(rank: int) -> str:
    """The pointer to ``rank``'s newest checkpoint: ``latest-rank{rank}.pt`` (a symlink; in a bucket, ``.symlink``).

    Example:
        >>> from reweigh.safety import CHECKPOINT_NAME, latest_name
        >>> latest_name(1), CHECKPOINT_NAME.fullmatch('ep0-ba15-rank1.pt')['batch']
        ('latest-rank1.pt', '15')
    """
    return f'latest-rank{rank}.pt'


def set_aside_interrupted_checkpoints(folder: str | os.PathLike, rank: int) -> list[Path]:
    """Rename the checkpoints of ``rank`` that are newer than its ``latest-rank{rank}.pt`` symlink.

    Composer writes a checkpoint straight to its final name and only then points the ``latest``
    symlink at it. A run killed in between leaves a checkpoint file that may be truncated and that
    autoresume does not load; worse, Composer then refuses to start because that file "may conflict
    with a future checkpoint". Such files are renamed to ``NAME.interrupted`` (kept, not deleted), so
    that autoresume continues from the last checkpoint the symlink vouches for. Only Composer's default
    names (``ep{epoch}-ba{batch}-rank{rank}.pt``, ``latest-rank{rank}.pt``) are recognised; a folder
    whose ``latest`` is not a symlink is left alone.

    Args:
        folder: The local checkpoint folder.
        rank: Whose checkpoints to check (the global rank).

    Returns:
        list[Path]: The renamed files.

    Example:
        >>> import tempfile
        >>> from reweigh.safety import set_aside_interrupted_checkpoints
        >>> set_aside_interrupted_checkpoints(tempfile.mkdtemp(), rank=0)
        []
    """
    folder = Path(folder)
    latest = folder / latest_name(rank)
    if not folder.is_dir() or (latest.exists() and not latest.is_symlink()):
        return []
    vouched = CHECKPOINT_NAME.match(os.path.basename(os.readlink(latest))) if latest.is_symlink() else None
    last_batch = int(vouched['batch']) if vouched else -1
    moved = []
    for path in sorted(folder.iterdir()):
        match = CHECKPOINT_NAME.match(path.name)
        if match and int(match['rank']) == rank and int(match['batch']) > last_batch:
            moved.append(path.rename(path.with_name(path.name + '.interrupted')))
    return moved
