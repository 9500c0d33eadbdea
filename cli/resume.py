"""Resumption: checkpoint names, and checkpoint folders left behind by an interrupted save."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ['CHECKPOINT_NAME', 'set_aside_interrupted_checkpoints']

CHECKPOINT_NAME = re.compile(r'^ep(\d+)-ba(?P<batch>\d+)-rank(?P<rank>\d+)\.pt$')
"""Composer's default checkpoint file name, ``ep{epoch}-ba{batch}-rank{rank}.pt``."""


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
