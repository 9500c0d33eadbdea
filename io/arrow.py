"""Reading runs and histories where they are (local, ``s3://``, ``gs://``) through pyarrow filesystems.

Analysis (``reweigh analyze``, ``compare``, ``curate``'s history) reads with pyarrow: columnar Parquet reads and
listings that DuckDB scans directly, without torch, Composer or Streaming.

Example:
    >>> import os, tempfile
    >>> from reweigh.io.arrow import filesystem_for, read_text
    >>> folder = tempfile.mkdtemp()
    >>> type(filesystem_for(folder)[0]).__name__
    'LocalFileSystem'
    >>> read_text(os.path.join(folder, 'summary.json'), missing_ok=True) is None
    True
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from reweigh.io.uri import is_remote

__all__ = ['filesystem_for', 'read_text']


def filesystem_for(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it, for a local path or a URI.

    ``s3://`` honours ``S3_ENDPOINT_URL`` as Streaming does; credentials come from the environment or the
    standard cloud config files, as pyarrow reads them, and are never logged.
    """
    path = str(path)
    if not is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    endpoint = os.environ.get('S3_ENDPOINT_URL')
    if path.startswith('s3://') and endpoint:
        scheme, _, host = endpoint.partition('://')
        return pafs.S3FileSystem(endpoint_override=host, scheme=scheme), path[len('s3://'):]
    return pafs.FileSystem.from_uri(path)


def read_text(path: str, missing_ok: bool = False) -> str | None:
    """The text of a local file or object-store URI (``s3://``, ``gs://``); ``None`` if absent and ``missing_ok``.

    Raises:
        FileNotFoundError: If it does not exist (and not ``missing_ok``).
    """
    filesystem, where = filesystem_for(path)
    if filesystem.get_file_info(where).type != pafs.FileType.File:
        if missing_ok:
            return None
        raise FileNotFoundError(f'{path} does not exist.')
    with filesystem.open_input_stream(where) as f:
        return f.read().decode()
