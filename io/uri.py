"""Local paths and object-store URIs: the scheme table, ``is_remote``, joins. Defined once for every reader and writer.

Example:
    >>> from reweigh.io.uri import is_remote, join, scheme_of
    >>> is_remote('s3://bucket/data'), is_remote('/tmp/data'), scheme_of('GS://b/x')
    (True, False, 'gs')
    >>> join('s3://bucket/data', 'train', 'code')
    's3://bucket/data/train/code'
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse

__all__ = ['READ_SCHEMES', 'UPLOAD_SCHEMES', 'is_remote', 'join', 'scheme_of', 'schemes_text']

READ_SCHEMES = ('s3', 'gs', 'oci', 'azure', 'dbfs', 'hf', 'sftp')
"""Object stores a dataset can be read from (Streaming's downloaders); any other ``scheme://`` is rejected."""

UPLOAD_SCHEMES = ('s3', 'gs', 'oci')
"""Object stores that run folders, histories and checkpoints can be uploaded to (Composer's object stores)."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an object-store URI (has a scheme other than ``file``)."""
    scheme = urllib.parse.urlparse(str(path)).scheme
    return len(scheme) > 1 and scheme != 'file'


def scheme_of(path: str | os.PathLike) -> str | None:
    """The lower-case scheme of a URI, ``None`` for a local path."""
    return urllib.parse.urlparse(str(path)).scheme.lower() if is_remote(path) else None


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    root = str(root)
    return posixpath.join(root, *parts) if is_remote(root) else os.path.join(root, *parts)


def schemes_text(schemes: tuple[str, ...]) -> str:
    """``'s3://, gs://, oci://'``: a scheme table as error messages name it."""
    return ', '.join(s + '://' for s in schemes)
