"""Record the reweighting core's microbatch records as one rank's loss history: what every trainer adapter calls.

:class:`HistoryRecorder` takes the :class:`~reweigh.algorithms.step.MicrobatchWeights` that
:meth:`~reweigh.algorithms.reweighter.Reweighter.step` returns, copies it off the device once (asynchronously on
CUDA), and hands it to the background :class:`~reweigh.history.writer.HistoryWriter`; on opening it truncates what
an interrupted attempt wrote at or past the resumption step, and with ``upload_to`` it mirrors every finished part
to an object store through a :class:`~reweigh.io.uploads.DurableUploader`. The Composer callback
(:class:`~reweigh.callbacks.LossHistory`), the Hugging Face ``ReweighTrainer`` and a hand-written loop all use it.

Example:
    >>> import tempfile, torch
    >>> from reweigh.algorithms.reweighter import Progress, Reweighter
    >>> from reweigh.history.format import encode_metadata, list_parts
    >>> from reweigh.history.recorder import HistoryRecorder
    >>> reweighter, root = Reweighter('linupper', warmup=0), tempfile.mkdtemp()
    >>> recorder = HistoryRecorder(root, rank=0, metadata=encode_metadata(reweighter.settings(), run_name='demo',
    ...                                                                    world_size=1))
    >>> for step in range(3):
    ...     out = reweighter.step(torch.rand(4), torch.full((4,), 16), Progress(step), sample_id=torch.arange(4))
    ...     recorder.record(step, out.record)
    >>> recorder.close()
    >>> [(p.first, p.last) for p in list_parts(root, recursive=True)]
    [(0, 2)]
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from reweigh.algorithms.step import MicrobatchWeights
from reweigh.history.format import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    list_parts,
    parse_part_name,
    rank_folder,
    truncate_history,
    write_part,
)
from reweigh.history.writer import HistoryChunk, HistoryWriter, to_host_async
from reweigh.io.uploads import DEFAULT_OUTAGE_LIMIT_S, DurableUploader, RemoteStoreError

log = logging.getLogger(__name__)

__all__ = ['DEFAULT_MAX_QUEUED_CHUNKS', 'HistoryRecorder', 'dataset_domain_names']

DEFAULT_MAX_QUEUED_CHUNKS = 4096
"""Microbatches that may wait for the writer before training blocks (rather than growing memory)."""


class HistoryRecorder:
    """One rank's loss history: records in, Parquet parts out (local, and mirrored to a bucket with ``upload_to``).

    Args:
        root (str | os.PathLike): The history folder; this rank writes ``root/rank{N}``.
        rank (int): Global rank.
        metadata (dict[bytes, bytes]): Every part's file metadata (:func:`~reweigh.history.format.encode_metadata`).
        resume_step (int): The step training starts at; rows an earlier attempt wrote at or past it are dropped
            (locally, and in the bucket with ``upload_to``). Default: ``0``.
        max_queued_chunks (int): Bound on microbatches waiting for the writer. Default: ``4096``.
        upload_to (str, optional): An object-store history folder (``s3://...``, ``gs://...``, ``oci://...``):
            every finished part is also uploaded to ``upload_to/rank{N}/``, in order, riding out outages.
        outage_limit_s (float): How long an upload may keep failing before :meth:`upload_finished` raises.

    Raises:
        ValueError: For ``max_queued_chunks <= 0``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        rank: int,
        metadata: dict[bytes, bytes],
        resume_step: int = 0,
        *,
        max_queued_chunks: int = DEFAULT_MAX_QUEUED_CHUNKS,
        upload_to: str | None = None,
        outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
    ) -> None:
        if max_queued_chunks <= 0:
            raise ValueError(f'max_queued_chunks must be > 0, got {max_queued_chunks}.')
        self.folder = Path(root) / rank_folder(rank)
        self.folder.mkdir(parents=True, exist_ok=True)
        dropped = truncate_history(self.folder, resume_step)
        if dropped:
            log.info(f'loss history: dropped {dropped} rows at or after step {resume_step} from an earlier attempt.')
        self.upload_error: RemoteStoreError | None = None
        """An upload that gave up while closing (kept, since trainers swallow errors raised while closing)."""
        self._writer = HistoryWriter(self.folder, rank, metadata, max_queued_chunks)
        self._step, self._microbatch = -1, 0
        self._warned_ids = False
        self._uploaded = 0
        self._uploader: DurableUploader | None = None
        if upload_to is not None:
            self._uploader = DurableUploader(upload_to, outage_limit_s, name=f'history rank{rank}',
                                             staging_dir=str(self.folder))
            self._sync_remote(resume_step)

    @property
    def finished(self) -> list[Path]:
        """The part files written so far, in order."""
        return self._writer.finished

    def record(self, step: int, record: MicrobatchWeights, mix: torch.Tensor | None = None) -> None:
        """Queue one microbatch's rows (the core's record) at training step ``step``; the device copies are issued
        here, without waiting for them. Microbatches of one step are numbered in the order they arrive. ``mix``:
        the ``(n,)`` online-mixing update each sample was drawn under (the batch's ``mix``; -1 when ``None``)."""
        if step != self._step:
            self._step, self._microbatch = step, 0
        n = record.weights.shape[0]
        device = record.weights.device
        if record.sample_id is None and not self._warned_ids:
            warnings.warn('loss history: batches carry no "sample_id"; rows are recorded with sample_id -1.', stacklevel=2)
            self._warned_ids = True
        missing = torch.full((n,), -1, dtype=torch.int64, device=device)
        columns = {
            'sample_id': missing if record.sample_id is None else record.sample_id,
            'domain': missing if record.domain is None else record.domain,
            'tokens': record.tokens, 'mix': missing if mix is None else mix, 'loss': record.losses,
            'weight': record.weights,
        }
        ints = torch.stack([torch.as_tensor(columns[c], device=device).reshape(n).to(torch.int64) for c in INT_COLUMNS])
        floats = torch.stack([columns[c].reshape(n).float() for c in FLOAT_COLUMNS])
        ready = None
        if ints.is_cuda:
            ints, floats = to_host_async(ints), to_host_async(floats)
            ready = torch.cuda.Event()
            ready.record()
        self._writer.put(HistoryChunk(step, self._microbatch, ints, floats, record.r, record.active, ready))
        self._microbatch += 1

    def flush(self, wait: bool) -> None:
        """Write what is queued as one part; with ``wait``, return once it is on disk (before a checkpoint)."""
        self._writer.flush(wait)

    def upload_finished(self) -> None:
        """Hand the parts finished since the last call to the uploader (no-op without ``upload_to``).

        Raises:
            RemoteStoreError: If an upload gave up (the store stayed unreachable past the outage limit).
        """
        if self._uploader is not None:
            self._uploader.check()
            self._queue_finished()

    def close(self) -> None:
        """Write and upload what is left (waiting for the store up to the outage limit); an upload that gave up is
        kept in :attr:`upload_error`."""
        self._writer.close()
        uploader, self._uploader = self._uploader, None
        if uploader is None:
            return
        if uploader.error is None:
            self._queue_finished(uploader)
        self.upload_error = uploader.close_keeping_error()

    def _queue_finished(self, uploader: DurableUploader | None = None) -> None:
        uploader = uploader or self._uploader
        finished = self._writer.finished
        for path in finished[self._uploaded:]:
            uploader.put(path, f'{path.parent.name}/{path.name}')
        self._uploaded = len(finished)

    def _sync_remote(self, resume_step: int) -> None:
        """Make this rank's uploaded parts equal the local ones: rows an interrupted attempt uploaded at or
        past ``resume_step`` are dropped (a part with none left stays as an empty part; object stores here
        cannot delete), and local parts the bucket lacks (written during an outage) go up."""
        store, rank_dir = self._uploader.store, self.folder.name
        remote = {}
        for name in store.list_objects(self._uploader.object_name(f'{rank_dir}/')):
            base = name.rsplit('/', 1)[-1]
            if steps := parse_part_name(base):
                remote[base] = steps[1]
        local = {Path(path).name: last for _, last, path in list_parts(self.folder)}
        for base, last in sorted(remote.items()):
            if last >= resume_step and base not in local:
                partial = self.folder / f'.{base}.remote'
                store.download_object(self._uploader.object_name(f'{rank_dir}/{base}'), str(partial), overwrite=True)
                table = pq.read_table(partial)
                write_part(table.filter(pc.less(table['step'], resume_step)), partial)
                self._uploader.put(partial, f'{rank_dir}/{base}')
                partial.unlink()
        for base, last in sorted(local.items()):
            if base not in remote or last >= resume_step:
                self._uploader.put(self.folder / base, f'{rank_dir}/{base}')


def dataset_domain_names(dataset: Any) -> list[str] | None:
    """The domain names by index of a training dataset, for the history's metadata: a reweigh dataset's (its
    manifest's) or, for a Hugging Face ``datasets.Dataset``, the names of a ``ClassLabel`` ``domain`` column;
    ``None`` for any other dataset.

    Example:
        >>> from types import SimpleNamespace
        >>> from reweigh.history.recorder import dataset_domain_names
        >>> dataset_domain_names(SimpleNamespace(manifest=SimpleNamespace(domain_names=['code', 'web'])))
        ['code', 'web']
        >>> dataset_domain_names([1, 2]) is None
        True
    """
    names = getattr(getattr(dataset, 'manifest', None), 'domain_names', None)
    if names is None:
        feature = (getattr(dataset, 'features', None) or {}).get('domain')
        names = getattr(feature, 'names', None)
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None
