"""Checkpoints in object storage that survive an outage: save locally, mirror to the bucket, resume from it.

With a remote ``save_folder``, ``reweigh train`` has Composer save checkpoints to a local folder and
:class:`MirrorCheckpoints` uploads each new one with a :class:`~reweigh.io.uploads.DurableUploader`
(in order, retried with backoff while the store is down, a clear error past the outage limit), then
the ``latest-rank{N}.pt.symlink`` pointer (Composer's layout for remote checkpoints), so the pointer in
the bucket only ever names a checkpoint that is completely there. On start,
:func:`restore_latest_from_remote` downloads the checkpoint that pointer names into the local folder
when the local folder has none, and Composer's autoresume continues from it.

Example:
    >>> from reweigh.callbacks import MirrorCheckpoints
    >>> # callbacks = [MirrorCheckpoints('runs/x/checkpoints', 's3://bucket/runs/x/checkpoints')]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from reweigh.io.objects import writing
from reweigh.io.uploads import DEFAULT_OUTAGE_LIMIT_S, DurableUploader, RemoteStoreError, object_key, object_store
from reweigh.safety.checkpoints import CHECKPOINT_NAME, latest_name

__all__ = ['MirrorCheckpoints', 'publish_latest', 'restore_latest_from_remote']


class MirrorCheckpoints(Callback):
    """Upload every checkpoint Composer writes to ``local_folder``, then its ``latest`` pointer, to ``remote_folder``.

    Args:
        local_folder: Composer's (local) ``save_folder``.
        remote_folder: ``s3://``, ``gs://`` or ``oci://`` folder that receives the checkpoints.
        outage_limit_s: How long an upload may keep failing before the run stops with an error.
    """

    def __init__(self, local_folder: str | os.PathLike, remote_folder: str,
                 outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S) -> None:
        self.local_folder = Path(local_folder)
        self.remote_folder = remote_folder.rstrip('/')
        self.outage_limit_s = outage_limit_s
        self.upload_error: RemoteStoreError | None = None
        self._uploader: DurableUploader | None = None
        self._mirrored: str | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        self._uploader = DurableUploader(self.remote_folder, self.outage_limit_s, name='checkpoints',
                                         staging_dir=str(self.local_folder))
        # What the bucket's pointer names is there; a newer local checkpoint (an attempt that stopped
        # during an outage) goes up at the next event.
        self._mirrored = _remote_pointer(self._uploader.store, self._uploader.prefix, dist.get_global_rank())

    def _target(self) -> str | None:
        latest = self.local_folder / latest_name(dist.get_global_rank())
        return os.readlink(latest) if latest.is_symlink() else None

    def _mirror_new(self) -> None:
        if self._uploader is None:
            return
        self._uploader.check()
        target = self._target()
        if target is None or target == self._mirrored:
            return
        self._uploader.put(self.local_folder / target, target)
        self._uploader.put_text(self._uploader.object_name(target), latest_name(dist.get_global_rank()) + '.symlink')
        self._mirrored = target

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._mirror_new()

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._mirror_new()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._mirror_new()

    def close(self, state: State, logger: Logger) -> None:
        """Upload what is left, waiting for the store (up to the outage limit); Composer swallows errors
        raised here, so a failure is kept in :attr:`upload_error` for the caller."""
        uploader = self._uploader
        if uploader is None:
            return
        try:
            self._mirror_new()
        except RemoteStoreError:
            pass  # close() raises it again
        self._uploader = None
        self.upload_error = uploader.close_keeping_error()


def _pointer_key(prefix: str, rank: int) -> str:
    """The object name of the bucket's ``latest-rank{rank}.pt.symlink`` pointer under ``prefix``."""
    return object_key(prefix, f'{latest_name(rank)}.symlink')


def _remote_pointer(store: Any, prefix: str, rank: int) -> str | None:
    """The checkpoint file name the bucket's ``latest-rank{rank}.pt.symlink`` names (None if there is none)."""
    pointer = _pointer_key(prefix, rank)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store.download_object(pointer, os.path.join(tmp, 'pointer'), overwrite=True)
        except FileNotFoundError:
            return None
        except Exception as e:  # botocore/google/oci raise their own error types
            raise ValueError(f'cannot read {pointer}: {type(e).__name__}: {e}') from e
        named = Path(tmp, 'pointer').read_text().strip()
    folder, _, name = named.rpartition('/')
    if folder != prefix or not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f'{pointer} names {named!r}, not a checkpoint of that folder')
    return name


def restore_latest_from_remote(local_folder: str | os.PathLike, remote_folder: str, rank: int,
                               replace: bool = False) -> str | None:
    """Download the checkpoint ``remote_folder``'s ``latest`` pointer names, unless ``local_folder`` has one.

    Args:
        local_folder: Composer's (local) ``save_folder``.
        remote_folder: The remote ``save_folder``.
        rank: Whose ``latest-rank{rank}.pt`` pointer to follow.
        replace: Make the local pointer name what the bucket's does even when there is one (downloading the
            checkpoint unless it is here), and remove it when the bucket has none: what the nodes other than rank 0's
            do, so that every node resumes from the checkpoint rank 0 does.

    Returns:
        str | None: The checkpoint's file name, or None when there is nothing to restore (or nothing to change).

    Raises:
        ValueError: If the pointer names something other than a checkpoint of that folder, or the store
            cannot be read.
    """
    local_folder = Path(local_folder)
    pointer = local_folder / latest_name(rank)
    if pointer.is_symlink() and not replace:
        return None
    store, prefix = object_store(remote_folder)
    name = _remote_pointer(store, prefix, rank)
    here = os.readlink(pointer) if pointer.is_symlink() else None
    if name == here:
        return None
    if name is None:
        pointer.unlink()
        return None
    local_folder.mkdir(parents=True, exist_ok=True)
    if not (local_folder / name).exists():
        partial = local_folder / f'.{name}.download'
        try:
            store.download_object(object_key(prefix, name), str(partial), overwrite=True)
        except Exception as e:  # botocore/google/oci raise their own error types
            raise ValueError(f'cannot download {remote_folder}/{name}: {type(e).__name__}: {e}') from e
        partial.rename(local_folder / name)
    pointer.unlink(missing_ok=True)
    pointer.symlink_to(name)
    return name


def publish_latest(local_folder: str | os.PathLike, remote_folder: str, rank: int = 0) -> str | None:
    """Make the bucket's ``latest`` pointer name the local latest checkpoint, uploading that first if the bucket's
    pointer names another (an attempt stopped before its mirror had uploaded it).

    What rank 0 does at the start of a run on several nodes before the others restore from the bucket
    (:func:`restore_latest_from_remote` with ``replace``), so every node resumes from the checkpoint rank 0 does.

    Returns:
        str | None: The checkpoint's file name, or None when there is no local checkpoint.

    Raises:
        ValueError: If the store cannot be read or written (the message names it).
    """
    pointer = Path(local_folder) / latest_name(rank)
    if not pointer.is_symlink():
        return None
    name = os.readlink(pointer)
    store, prefix = object_store(remote_folder)
    if _remote_pointer(store, prefix, rank) != name:
        with tempfile.TemporaryDirectory() as tmp, writing(remote_folder):
            store.upload_object(object_key(prefix, name), str(Path(local_folder) / name))
            Path(tmp, 'pointer').write_text(object_key(prefix, name))
            store.upload_object(_pointer_key(prefix, rank), str(Path(tmp, 'pointer')))
    return name
