"""Storage, defined once: local paths and object-store URIs for every reader and writer of reweigh.

* :mod:`reweigh.io.uri`: the scheme tables (read: Streaming's remotes; upload: Composer's object stores),
  ``is_remote``, ``join``.
* :mod:`reweigh.io.local`: atomic local writes (``.NAME.tmp``, then a rename) for run files, history parts, shards.
* :mod:`reweigh.io.objects`: datasets in a bucket, through Streaming's clients (download, list, upload).
* :mod:`reweigh.io.arrow`: reading runs and histories where they are, through pyarrow filesystems.
* :mod:`reweigh.io.uploads`: :class:`~reweigh.io.uploads.DurableUploader`, the in-order uploader that rides out
  outages while training, on Composer's object stores.

Each job has one client stack (``docs/architecture.md`` says why). This module and ``uri``/``local`` import
nothing heavy; the clients are imported where they are used.

Example:
    >>> from reweigh.io import is_remote, join
    >>> is_remote('gs://bucket/runs/x'), join('gs://bucket/runs', 'x', 'history')
    (True, 'gs://bucket/runs/x/history')
"""

from reweigh.io.local import atomic_path, write_atomically
from reweigh.io.uri import READ_SCHEMES, UPLOAD_SCHEMES, is_remote, join, scheme_of

__all__ = ['READ_SCHEMES', 'UPLOAD_SCHEMES', 'atomic_path', 'is_remote', 'join', 'scheme_of', 'write_atomically']
