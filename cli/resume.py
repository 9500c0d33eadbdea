"""Resumption: exact mid-epoch RNG state, and checkpoint folders left behind by an interrupted save."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import reproducibility

__all__ = ['CHECKPOINT_NAME', 'RestoreRngOnResume', 'set_aside_interrupted_checkpoints']

CHECKPOINT_NAME = re.compile(r'^ep(\d+)-ba(?P<batch>\d+)-rank(?P<rank>\d+)\.pt$')
"""Composer's default checkpoint file name, ``ep{epoch}-ba{batch}-rank{rank}.pt``."""


class RestoreRngOnResume(Callback):
    """Restore the RNG state (dropout masks, ...) when a run resumes mid-epoch from a checkpoint.

    Composer restores the RNG state on resumption at an epoch boundary, or mid-epoch when it replays
    ("spins") the dataloader. With a dataset that resumes itself, as Streaming's does, it skips the
    replay and the RNG state too, so a resumed run's dropout diverges from the uninterrupted run. This
    callback saves every rank's RNG state with each checkpoint and restores it before the first batch
    after loading one, which makes a resumed run equal to an uninterrupted one.

    Example:
        >>> from reweigh.cli.resume import RestoreRngOnResume
        >>> callbacks = [RestoreRngOnResume()]  # composer.Trainer(..., callbacks=callbacks)
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {'rng': reproducibility.get_rng_state()}  # a collective: Composer calls this on every rank

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get('rng')

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._pending is not None:
            reproducibility.load_rng_state(self._pending)
            self._pending = None


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
        >>> from reweigh.cli.resume import set_aside_interrupted_checkpoints
        >>> set_aside_interrupted_checkpoints(tempfile.mkdtemp(), rank=0)
        []
    """
    folder = Path(folder)
    latest = folder / f'latest-rank{rank}.pt'
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
