"""Datasets in object storage (``s3://``, ``gs://``, any Streaming remote): download, list and upload objects with
Streaming's clients, the ones a ``StreamingDataset`` reads the same data with (same credentials, same endpoints).

Example:
    >>> from reweigh.io.objects import writing
    >>> with writing('s3://bucket/data/train/code'):
    ...     raise ConnectionError('no route to host')
    Traceback (most recent call last):
    ...
    ValueError: cannot write s3://bucket/data/train/code: ConnectionError: no route to host
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ['check_writable', 'download', 'list_objects', 'upload', 'writing']


def download(remote: str, local: str, timeout: float = 60.0) -> None:
    """Download one object to ``local`` (overwriting it), with Streaming's downloader for the scheme.

    Raises:
        FileNotFoundError: If the object does not exist.
        ValueError: If the store cannot be reached or read (the message names ``remote``).
    """
    from streaming.base.storage import CloudDownloader

    if os.path.exists(local):
        os.remove(local)
    try:
        CloudDownloader.direct_download(remote, local, timeout)
    except FileNotFoundError:
        raise
    except Exception as e:  # botocore/gcs/... raise their own error types
        message = str(e).lower()
        if 'nosuchkey' in message or '404' in message or 'not found' in message:
            raise FileNotFoundError(f'{remote} does not exist') from e
        raise ValueError(f'cannot read {remote}: {type(e).__name__}: {e}') from e


def list_objects(uri: str) -> list[str]:
    """URIs of the objects at ``uri``: ``[uri]`` if it is an object, else the objects under ``uri/``, those
    with a hidden (``.``) path component skipped, sorted by path components as a local folder's files are.

    Raises:
        ValueError: If the store cannot be listed (the message names ``uri``).
    """
    import tempfile

    parsed = urllib.parse.urlparse(uri)
    prefix = parsed.path.strip('/')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Listed from the bucket's root with the prefix as given: Streaming's listing under a path adds a '/'.
            keys = _uploader(tmp, f'{parsed.scheme}://{parsed.netloc}').list_objects(prefix) or []
    except Exception as e:  # botocore/gcs/... raise their own error types
        raise ValueError(f'cannot list {uri}: {type(e).__name__}: {e}') from e
    if prefix in keys:
        return [uri]
    found = []
    for key in keys:
        parts = (key[len(prefix) + 1:] if prefix else key).split('/')
        if (not prefix or key.startswith(prefix + '/')) and all(parts) and not any(p.startswith('.') for p in parts):
            found.append((parts, f'{parsed.scheme}://{parsed.netloc}/{key}'))
    return [found_uri for _, found_uri in sorted(found)]


@contextmanager
def writing(target: str) -> Iterator[None]:
    """Report any error of the block (an object store's own type: botocore, gcs, ...) as ``ValueError: cannot
    write {target}: ...``."""
    try:
        yield
    except Exception as e:  # botocore/gcs/... raise their own error types
        raise ValueError(f'cannot write {target}: {type(e).__name__}: {e}') from e


def upload(local_root: str, remote_root: str, relative_paths: list[str]) -> None:
    """Upload files ``local_root/p`` to ``remote_root/p`` with Streaming's uploader for the scheme.

    Raises:
        ValueError: If the remote is unreachable or not writable (the message names ``remote_root``).
    """
    try:
        uploader = _uploader(local_root, remote_root)
        for rel in relative_paths:
            uploader.upload_file(rel)
    except Exception as e:  # botocore/gcs/... raise their own error types
        raise ValueError(f'cannot write to {remote_root}: {type(e).__name__}: {e}') from e


def check_writable(remote_root: str, staging: str) -> None:
    """Fail early when ``remote_root``'s bucket is missing or the store is unreachable.

    Raises:
        ValueError: The message names ``remote_root`` and the cause.
    """
    try:
        _uploader(staging, remote_root)
    except Exception as e:  # botocore/gcs/... raise their own error types
        raise ValueError(f'remote {remote_root} is unreachable or not writable: {type(e).__name__}: {e}') from e


def _uploader(local_root: str, remote_root: str):
    import logging

    from streaming.base.storage import CloudUploader

    # Staging folders are expected to hold files; silence Streaming's "exists and not empty" warning.
    logging.getLogger('streaming.base.storage.upload').setLevel(logging.ERROR)
    return CloudUploader.get(out=(local_root, remote_root), keep_local=True, exist_ok=True)
