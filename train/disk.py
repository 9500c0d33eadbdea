"""A full disk during a run: recognise it in whatever error the writer raised, and say where and what in one line.

A disk fills up in the middle of writing a checkpoint (torch's archive writer then raises a ``RuntimeError`` with no
errno), a loss-history part (the writer thread's ``OSError``, raised again on the training thread) or a log line.
:func:`disk_full_message` turns such an error into one line naming the path and what was being written, so
``reweigh train`` can stop with it instead of a traceback. Nothing is left half-written where a reader would take it
for whole: history parts are written under a hidden temporary name and renamed, a checkpoint cut short is not named
by ``latest`` (and is set aside on resume), a metrics line cut short is skipped by its readers.

Example:
    >>> import errno
    >>> from reweigh.train.disk import disk_full_message
    >>> error = OSError(errno.ENOSPC, 'No space left on device', 'runs/x/history/rank0/.part-000.tmp')
    >>> disk_full_message(error, {'a loss-history part': 'runs/x/history'})  # what: from the writer's traceback
    'no space left on the device of runs/x/history/rank0/.part-000.tmp while writing the run'
    >>> disk_full_message(OSError(errno.EACCES, 'Permission denied'), {}) is None
    True
"""

from __future__ import annotations

import errno
import os
import shutil
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ['DiskFull', 'disk_full_message']

_FULL = (errno.ENOSPC, errno.EDQUOT)
_TORCH_WRITE = ('file write failed', 'unexpected pos', 'PytorchStreamWriter failed')
"""What torch's archive writer says when a write comes up short (it gives no errno)."""
_NEARLY_FULL_BYTES = 64 << 20
"""Below this much free space a folder whose checkpoint write failed counts as full."""
_WRITERS = (('composer/utils/checkpoint', 'a checkpoint'), ('torch/serialization', 'a checkpoint'),
            ('history/', 'a loss-history part'), ('metrics_log', 'metrics.jsonl'), ('file_logger', 'the log file'))
"""Which code was writing, by the source file in the traceback, and what it writes."""


class DiskFull(ValueError):
    """The run stopped because a disk it writes to is full (one line: where, what; exit 2)."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _what(error: BaseException) -> str | None:
    for e in _chain(error):
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            name = frame.filename.replace(os.sep, '/')
            for marker, what in _WRITERS:
                if marker in name:
                    return what
    return None


def _free_bytes(path: str) -> int | None:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_message(error: BaseException, targets: Mapping[str, str]) -> str | None:
    """One line naming the path and what was being written, if ``error`` comes from a full disk; else ``None``.

    Args:
        error: What the run raised.
        targets: What the run writes (``'a checkpoint'``, ``'a loss-history part'``, ...) to the local folder it
            writes it in; the folder names the place where the error itself names no file.

    Returns:
        str | None: ``'no space left on the device of PATH while writing WHAT'``, or None for any other error.
    """
    what = _what(error)
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _FULL:
            path = e.filename or targets.get(what or '', '') or next(iter(targets.values()), '')
            return f'no space left on the device of {path} while writing {what or "the run"}'
    if what == 'a checkpoint' and any(any(m in str(e) for m in _TORCH_WRITE) for e in _chain(error)):
        folder = targets.get(what)
        free = _free_bytes(folder) if folder else None
        if free is not None and free < _NEARLY_FULL_BYTES:
            return f'no space left on the device of {folder} while writing {what} ({free >> 10} KiB free)'
    return None
