"""The write of a dataset to its output, as ``prepare_dataset`` and ``curate_dataset`` do it on either engine.

A dataset is complete when its ``manifest.json`` is there; every writer goes through one
:class:`DatasetWrite`, so that none leaves anything a reader could take for one that is not:

1. :func:`dataset_write` opens a scratch folder, removed at the end. A local dataset is written in place
   (:attr:`DatasetWrite.root` is the output); a remote one is staged in the scratch folder and uploaded at
   the end, but for its MDS streams, whose shards :meth:`DatasetWrite.stream` sends straight to the store.
2. :meth:`DatasetWrite.existing` reads the manifest the output already holds, if any (and checks that a
   remote output can be written).
3. :meth:`DatasetWrite.claim` makes sure the output may be written: a local one that holds anything, or
   a remote one that holds a dataset, needs ``overwrite``; a local one is then emptied (or created).
4. :meth:`DatasetWrite.commit` writes the manifest last: locally in place, remotely as the last upload.
5. If the block raises (``KeyboardInterrupt`` too) after the claim, a local output is removed whole; a
   remote one keeps the shards already uploaded, and gets no new manifest.

Example:
    >>> import os, tempfile
    >>> from reweigh.pipeline.manifest import Manifest
    >>> from reweigh.pipeline.shards import columns
    >>> out = os.path.join(tempfile.mkdtemp(), 'data')
    >>> manifest = Manifest(seq_len=8, domains=[], tokenizer={'path': 'tokenizer'}, mds={'columns': columns(512)})
    >>> with dataset_write(out, 'reweigh-example-') as write:
    ...     write.claim(write.existing(), overwrite=False)
    ...     _ = open(os.path.join(write.root, 'notes.txt'), 'w').write('written first')
    ...     write.commit(manifest)
    >>> sorted(os.listdir(out))
    ['manifest.json', 'notes.txt']
    >>> with dataset_write(out, 'reweigh-example-') as write:
    ...     write.claim(write.existing(), overwrite=True)
    ...     raise RuntimeError('stopped half-way')
    Traceback (most recent call last):
    ...
    RuntimeError: stopped half-way
    >>> os.path.exists(out)
    False
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reweigh.io import objects, uri
from reweigh.pipeline.manifest import MANIFEST_NAME, Manifest, read_manifest

__all__ = ['DatasetWrite', 'dataset_write']


class DatasetWrite:
    """One write of a dataset to ``out``; made by :func:`dataset_write`, which also undoes a failed one.

    Attributes:
        out (str): The dataset root: a local folder or a URI.
        remote (bool): Whether ``out`` is a URI.
        scratch (str): A local folder for the write's own use (caches, probes), removed at the end.
        root (str): Where the dataset's files are written: ``out``, or for a remote ``out`` a staging
            folder in ``scratch`` that :meth:`commit` uploads.
        created (bool): Whether :meth:`claim` made ``out`` a fresh local folder (removed on failure).
    """

    def __init__(self, out: str, scratch: str) -> None:
        self.out = out
        self.remote = uri.is_remote(out)
        self.scratch = scratch
        self.root = os.path.join(scratch, 'out') if self.remote else out
        self.created = False

    def existing(self) -> Manifest | None:
        """The manifest ``out`` holds, or None (no dataset, or a local one that is incomplete or unreadable).

        Raises:
            ValueError: If ``out`` is a local file, a remote ``out`` cannot be written, or its manifest is invalid.
        """
        if self.remote:
            objects.check_writable(self.out, os.path.join(self.scratch, '.probe'))
        elif os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f'output {self.out!r} exists and is not a folder')
        try:
            return read_manifest(self.out, os.path.join(self.scratch, '.manifest') if self.remote else None)
        except FileNotFoundError:
            return None
        except ValueError:
            if self.remote:
                raise
            return None

    def claim(self, existing: Manifest | None, overwrite: bool) -> None:
        """Make sure ``out`` may be written (given what :meth:`existing` found); empty or create a local one.

        Callers write nothing to ``out`` before it, so an output that may not be written is left as it was.

        Raises:
            ValueError: If ``out`` holds a dataset, or a local ``out`` anything, and ``overwrite`` is False.
        """
        if self.remote:
            if existing is not None and not overwrite:
                raise ValueError(f'{self.out} already holds a different dataset (other inputs or settings); '
                                 'pass overwrite=True (--overwrite) to replace it')
            os.makedirs(self.root, exist_ok=True)
            return
        if os.path.isdir(self.out) and os.listdir(self.out):
            if not overwrite:
                what = 'a different dataset (other inputs or settings)' if existing else 'other or incomplete data'
                raise ValueError(f'output folder {self.out} already holds {what}; pass overwrite=True (--overwrite) '
                                 'to replace it, or choose an empty folder')
            shutil.rmtree(self.out)
        os.makedirs(self.out, exist_ok=True)
        self.created = True

    @contextmanager
    def stream(self, rel: str, **mds: Any) -> Iterator[Any]:
        """An ``MDSWriter`` for the stream ``rel`` (e.g. ``train/code``), finished when the block ends without error.

        For a remote ``out`` the shards are uploaded as they are written (and their local copies removed).

        Args:
            rel (str): The stream's folder, relative to the dataset root.
            **mds: ``MDSWriter`` arguments (``columns``, ``compression``, ``hashes``, ``size_limit``, ...).

        Raises:
            ValueError: If the store cannot be written (the message names the stream).
        """
        from streaming import MDSWriter

        target = uri.join(self.out, rel)
        dest: str | tuple[str, str] = os.path.join(self.root, rel)
        if self.remote:
            dest = (os.path.join(self.root, '.shards', rel), target)
        with objects.writing(target):
            writer = MDSWriter(out=dest, exist_ok=True, **mds)
        yield writer
        with objects.writing(target):
            writer.finish()

    def commit(self, manifest: Manifest) -> None:
        """Write ``manifest.json``, which marks the dataset complete; for a remote ``out``, upload it all, it last.

        Raises:
            ValueError: If the store cannot be written.
        """
        with open(os.path.join(self.root, MANIFEST_NAME), 'w') as f:
            f.write(manifest.to_json())
        if self.remote:
            files = [os.path.relpath(os.path.join(d, n), self.root) for d, _, ns in os.walk(self.root) for n in ns]
            files.sort(key=lambda p: p == MANIFEST_NAME)  # the manifest goes last: it marks the dataset complete
            objects.upload(self.root, self.out, files)


@contextmanager
def dataset_write(out: str | os.PathLike, prefix: str) -> Iterator[DatasetWrite]:
    """A :class:`DatasetWrite` to ``out``: its scratch folder is removed at the end, and if the block raises
    after :meth:`~DatasetWrite.claim` made a local ``out``, ``out`` is removed whole.

    Args:
        out (str | PathLike): The dataset root: a local folder or a URI.
        prefix (str): Name prefix of the scratch folder (e.g. ``reweigh-prepare-``).

    Example:
        >>> import os, tempfile
        >>> with dataset_write(os.path.join(tempfile.mkdtemp(), 'data'), 'reweigh-example-') as write:
        ...     write.existing() is None, write.remote
        (True, False)
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        write = DatasetWrite(str(out), scratch)
        try:
            yield write
        except BaseException:
            if write.created:
                shutil.rmtree(write.out, ignore_errors=True)
            raise
