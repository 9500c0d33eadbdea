"""Atomic local writes: a file appears whole or not at all, for every writer (run files, history parts, shards).

A file is written under a temporary name beside it, ``.NAME.tmp``, then renamed over ``NAME``; a reader never sees
a partial file and a killed writer leaves at most the temporary one (which readers ignore: it starts with ``.``).

Example:
    >>> import os, tempfile
    >>> from reweigh.io.local import atomic_path, write_atomically
    >>> path = os.path.join(tempfile.mkdtemp(), 'summary.json')
    >>> write_atomically(path, '{}')
    >>> with atomic_path(path) as tmp:
    ...     os.path.basename(tmp)
    ...     _ = open(tmp, 'w').write('{"steps": 1}')
    '.summary.json.tmp'
    >>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
    ('{"steps": 1}', ['summary.json'])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ['atomic_path', 'temporary_name', 'write_atomically']


def temporary_name(path: str | os.PathLike) -> str:
    """The temporary name :func:`atomic_path` writes ``path`` under: ``.NAME.tmp`` beside it."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.tmp')


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``, on error it is removed."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to the local ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
        f.write(data)
