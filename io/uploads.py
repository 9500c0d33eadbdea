"""Uploads that survive an object-store outage: in order, off the training thread, retried with backoff.

:class:`DurableUploader` keeps a hard link (or copy) of every file handed to it, so the caller may
delete or replace the original, and uploads the files one after the other in a background thread.
While the store is unreachable it warns once, retries with exponential backoff (1 s doubling to
``max_backoff_s``), and says when the store is back. If one file cannot be uploaded for
``outage_limit_s`` seconds it gives up: :meth:`DurableUploader.check` (call it from the training loop)
and :meth:`DurableUploader.close` then raise :class:`RemoteStoreError`; files not yet uploaded stay
where the caller wrote them. Order is kept, so an object that points at another (a ``latest``
pointer) is uploaded only after what it points at.

Use: ``uploader = DurableUploader('s3://bucket/runs/x/checkpoints', name='checkpoints')``, then
``uploader.put(path, 'ep0-ba100-rank0.pt')`` as files appear, ``uploader.check()`` now and then, and
``uploader.close()`` at the end.

Example:
    >>> from reweigh.io.uploads import object_store
    >>> object_store('ftp://host/folder')
    Traceback (most recent call last):
    ...
    ValueError: ftp://host/folder: uploads need one of s3://, gs://, oci://
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

from reweigh.io.uri import UPLOAD_SCHEMES, scheme_of, schemes_text

__all__ = ['DEFAULT_OUTAGE_LIMIT_S', 'DurableUploader', 'RemoteStoreError', 'object_key', 'object_store']

DEFAULT_OUTAGE_LIMIT_S = 600.0
"""How long one upload keeps retrying while the store is unreachable before the run gives up."""


class RemoteStoreError(ValueError):
    """The object store stayed unreachable for longer than the outage limit."""


def object_store(uri: str) -> tuple[Any, str]:
    """Composer's ``ObjectStore`` for ``uri``'s bucket, and the object-name prefix ``uri`` stands for.

    Credentials come from the environment and the standard cloud config files (``S3_ENDPOINT_URL``
    for S3-compatible stores).

    Raises:
        ValueError: For a scheme other than ``s3://``, ``gs://`` and ``oci://``, or without Composer (the
            ``composer`` extra of :mod:`reweigh.integrations.extras`, which the message names).
    """
    if scheme_of(uri) not in UPLOAD_SCHEMES:
        raise ValueError(f'{uri}: uploads need one of {schemes_text(UPLOAD_SCHEMES)}')
    try:
        from composer.utils import parse_uri
        from composer.utils.object_store.utils import build_remote_backend
    except ModuleNotFoundError as e:  # io imports nothing of reweigh's above it, so the extra is named here
        raise ValueError(f"{uri}: uploads to a bucket use Composer's object stores (not installed: {e.name}): "
                         "pip install 'reweigh[composer]'") from e

    backend, bucket, path = parse_uri(uri)
    return build_remote_backend(backend, {'bucket': bucket}), path.strip('/')


def object_key(prefix: str, relative: str) -> str:
    """The object name of ``relative`` under the object-name ``prefix`` (which may be empty)."""
    return f'{prefix}/{relative}' if prefix else relative


class _Item(NamedTuple):
    staged: str
    object_name: str


class DurableUploader:
    """Upload files to ``remote_folder`` in order, from a background thread, riding out outages.

    Args:
        remote_folder: ``s3://bucket/prefix``, ``gs://...`` or ``oci://...``.
        outage_limit_s: Give up after one file failed to upload for this long. Default: 600.
        max_backoff_s: Longest wait between two attempts. Default: 30.
        name: Who uploads, for messages (e.g. ``'checkpoints'``).
        staging_dir: Where the links to queued files live; on the files' file system, a link costs
            nothing (elsewhere a copy is made). Default: a temporary folder.

    Raises:
        ValueError: If the store cannot be listed at construction (unreachable, no bucket, no rights).
    """

    def __init__(self, remote_folder: str, outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
                 max_backoff_s: float = 30.0, name: str = 'uploads', staging_dir: str | None = None) -> None:
        if not outage_limit_s > 0 or not max_backoff_s > 0:
            raise ValueError(f'outage_limit_s and max_backoff_s must be > 0, got {outage_limit_s}, {max_backoff_s}')
        self.remote_folder = remote_folder.rstrip('/')
        self.store, self.prefix = object_store(self.remote_folder)
        self.outage_limit_s, self.max_backoff_s, self.name = outage_limit_s, max_backoff_s, name
        try:
            self.store.list_objects(self.prefix + '/')
        except Exception as e:  # botocore/google/oci raise their own error types
            raise ValueError(f'{self.remote_folder} is unreachable or not readable: {type(e).__name__}: {e}') from e
        self.error: RemoteStoreError | None = None
        if staging_dir is not None:
            os.makedirs(staging_dir, exist_ok=True)
        self._staging = tempfile.mkdtemp(prefix='.reweigh-upload-', dir=staging_dir)
        self._count = itertools.count()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f'reweigh-upload-{name}', daemon=True)
        self._thread.start()

    def object_name(self, relative: str) -> str:
        """The object name of ``relative`` under the remote folder."""
        return object_key(self.prefix, relative)

    def put(self, local_path: str | os.PathLike, relative: str) -> None:
        """Queue ``local_path`` for upload as ``{remote_folder}/{relative}`` (a link or copy is taken now)."""
        self.check()
        staged = self._staged(relative)
        try:
            os.link(local_path, staged)
        except OSError:  # another file system
            shutil.copy2(local_path, staged)
        self._queue.put(_Item(staged, self.object_name(relative)))

    def put_text(self, text: str, relative: str) -> None:
        """Queue a small text object (e.g. a ``.symlink`` pointer) for upload as ``relative``."""
        self.check()
        staged = self._staged(relative)
        with open(staged, 'w') as f:
            f.write(text)
        self._queue.put(_Item(staged, self.object_name(relative)))

    def _staged(self, relative: str) -> str:
        return os.path.join(self._staging, f'{next(self._count):09d}-{os.path.basename(relative)}')

    def check(self) -> None:
        """Raise :class:`RemoteStoreError` if an upload gave up."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until everything queued is uploaded (or the uploader gave up), then stop.

        Raises:
            RemoteStoreError: If an upload gave up.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        shutil.rmtree(self._staging, ignore_errors=True)
        self.check()

    def close_keeping_error(self, last: tuple[str | os.PathLike, str] | None = None) -> RemoteStoreError | None:
        """Queue ``last`` (``(local_path, relative)``, if given) and :meth:`close`, returning the error of an upload
        that gave up instead of raising it: what a trainer's callback does when it closes, since trainers swallow
        errors raised there (the caller keeps it and raises it once the trainer has closed)."""
        try:
            if last is not None:
                self.put(*last)
            self.close()
        except RemoteStoreError as e:
            return e
        return None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None and self._upload(item):
                os.remove(item.staged)

    def _upload(self, item: _Item) -> bool:
        down_since, backoff = None, 1.0
        while True:
            try:
                self.store.upload_object(item.object_name, item.staged)
            except Exception as e:  # botocore/google/oci raise their own error types
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    _say(f'{self.name}: cannot upload to {self.remote_folder} ({type(e).__name__}: {_first_line(e)}); '
                         f'training goes on, retrying for up to {self.outage_limit_s:.0f} s')
                if now - down_since >= self.outage_limit_s:
                    self.error = RemoteStoreError(
                        f'{self.name}: {self.remote_folder} stayed unreachable for {now - down_since:.0f} s '
                        f'(limit {self.outage_limit_s:.0f} s; last error {type(e).__name__}: {_first_line(e)}); '
                        f'{item.object_name} and later files are not uploaded. What is in the bucket is consistent: '
                        'run the same command again once the store is back, and it resumes from there')
                    return False
                time.sleep(min(backoff, self.max_backoff_s, max(0.0, down_since + self.outage_limit_s - now)))
                backoff *= 2
                continue
            if down_since is not None:
                _say(f'{self.name}: {self.remote_folder} is reachable again after {time.monotonic() - down_since:.0f} s; '
                     f'{self._queue.qsize() + 1} queued file(s) going up')
            return True


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [''])[0][:300]


def _say(message: str) -> None:
    print(f'reweigh: warning: {message}', file=sys.stderr, flush=True)
