"""Per-sample loss and weight history, written as Parquet part files off the training thread.

The format (folder layout, part names, columns, metadata) is defined in :mod:`reweigh.analysis.format`,
which every reader uses too.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from reweigh.algorithms.loss_reweighting import LossReweighting
from reweigh.algorithms.times import parse_time
from reweigh.analysis.format import (
    FLOAT_COLUMNS,
    HISTORY_SCHEMA,
    INT_COLUMNS,
    list_parts,
    parse_part_name,
    part_name,
    truncate_history,
    write_part,
)
from reweigh.pipeline.uploads import DEFAULT_OUTAGE_LIMIT_S, DurableUploader, RemoteStoreError

log = logging.getLogger(__name__)

__all__ = ['HistoryChunk', 'HistoryWriter', 'LossHistory', 'to_host_async']

class HistoryChunk(NamedTuple):
    """One microbatch of rows for :class:`HistoryWriter` (tensors on the host, or being copied there)."""

    step: int
    microbatch: int
    ints: torch.Tensor  # (len(INT_COLUMNS), n) int64, in that order
    floats: torch.Tensor  # (len(FLOAT_COLUMNS), n) float32, in that order
    r: float
    active: bool
    ready: Any  # torch.cuda.Event or None


class HistoryWriter:
    """The background thread behind :class:`LossHistory`: it assembles one rank's chunks into Parquet parts.

    ``put`` queues a chunk (blocking once ``max_queued`` wait); ``flush`` writes everything queued so far as
    one part named after its first and last step (see :mod:`reweigh.analysis.format`); ``close`` flushes and
    stops. An error in the thread is raised on the caller's next ``put`` or ``flush``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from reweigh.callbacks.history import HistoryChunk, HistoryWriter
        >>> writer = HistoryWriter(Path(tempfile.mkdtemp()), rank=0, metadata={}, max_queued=8)
        >>> writer.put(HistoryChunk(0, 0, torch.tensor([[7], [1], [12]]), torch.tensor([[2.5], [1.0]]), 1.0, True, None))
        >>> writer.close()
        >>> [p.name for p in writer.finished]
        ['part-000000000-000000000.parquet']
    """

    def __init__(self, folder: Path, rank: int, metadata: dict[bytes, bytes], max_queued: int) -> None:
        self.folder, self.rank, self.metadata = folder, rank, metadata
        self.queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self.finished: list[Path] = []
        self.error: BaseException | None = None
        self._chunks: list[HistoryChunk] = []
        self._thread = threading.Thread(target=self._run, name=f'reweigh-history-rank{rank}', daemon=True)
        self._thread.start()

    def put(self, chunk: HistoryChunk) -> None:
        self._raise_if_failed()
        self.queue.put(chunk)

    def flush(self, wait: bool) -> None:
        """Write everything queued so far as one part file; with ``wait``, return once it is on disk."""
        self._raise_if_failed()
        done = threading.Event()
        self.queue.put(done)
        if wait:
            done.wait()
            self._raise_if_failed()

    def close(self) -> None:
        if self._thread.is_alive():
            self.flush(wait=True)
            self.queue.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f'LossHistory writer for rank {self.rank} failed: {self.error}') from self.error

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if isinstance(item, threading.Event):
                    self._write_part()
                    item.set()
                elif self.error is None:
                    self._chunks.append(item)
            except BaseException as e:  # surfaced on the training thread at the next put/flush
                self.error = e
                item.set()

    def _write_part(self) -> None:
        chunks, self._chunks = self._chunks, []
        if not chunks or self.error is not None:
            return
        columns: dict[str, list[np.ndarray]] = {name: [] for name in HISTORY_SCHEMA.names}
        for c in chunks:
            if c.ready is not None:
                c.ready.synchronize()
            n = c.ints.shape[1]
            for name, values in [*zip(INT_COLUMNS, c.ints.numpy()), *zip(FLOAT_COLUMNS, c.floats.numpy())]:
                columns[name].append(values)
            for name, value in (('step', c.step), ('microbatch', c.microbatch), ('rank', self.rank), ('r', c.r),
                                ('active', c.active)):
                columns[name].append(np.full(n, value))
        arrays = [pa.array(np.concatenate(columns[f.name]).astype(f.type.to_pandas_dtype()), type=f.type)
                  for f in HISTORY_SCHEMA]
        table = pa.Table.from_arrays(arrays, schema=HISTORY_SCHEMA.with_metadata(self.metadata))
        path = self.folder / part_name(chunks[0].step, chunks[-1].step)
        write_part(table, path)
        self.finished.append(path)


class LossHistory(Callback):
    """Record every training sample's loss and weight, per step, as Parquet files.

    Needs :class:`~reweigh.algorithms.LossReweighting` among the trainer's algorithms (it reads the
    losses and weights the algorithm used; use ``LossReweighting('uniform')`` for a baseline run, which
    leaves training untouched). Rows are copied off the device asynchronously, buffered, and written by
    a background thread every ``flush_interval`` batches, so training does not wait on disk. At every
    checkpoint the buffer is flushed synchronously (Composer calls :meth:`state_dict` on all ranks), so
    the history on disk covers every step up to any checkpoint; when a run resumes from step ``s``,
    rows at or past ``s`` left by the interrupted attempt are removed first. A crash therefore loses
    at most the rows since the last flush and never leaves a partial file.

    Args:
        folder (str): Where to write; ``{run_name}`` is filled in. Each rank writes ``rank{N}/``.
            Default: ``'{run_name}/history'``.
        flush_interval (str | int): Batches between part files (``'100ba'`` or 100). Default: ``'100ba'``.
        max_queued_chunks (int): Bound on microbatches waiting for the writer; training blocks (rather
            than growing memory) if the disk cannot keep up. Default: ``4096``.
        upload_to (str, optional): An object-store folder (``s3://bucket/runs/{run_name}/history``,
            ``gs://...``, ``oci://...``); if set, every finished part file is also uploaded there, in the
            background, as ``{upload_to}/rank{N}/{file}``, retried while the store is unreachable (see
            :class:`~reweigh.pipeline.uploads.DurableUploader`). A resumed run first makes the uploaded
            parts match the local ones up to the resumption step. Credentials come from the environment
            or the standard cloud config files.
        outage_limit_s (float): How long an upload may keep failing before training stops with an error
            (kept in :attr:`upload_error` when it happens while closing). Default: 600.

    Example:
        >>> from reweigh.algorithms import LossReweighting
        >>> from reweigh.callbacks import LossHistory
        >>> callbacks = [LossHistory(folder='runs/{run_name}/history', flush_interval='50ba')]
        >>> algorithms = [LossReweighting('linupper', warmup='100ba')]
        >>> # composer.Trainer(..., algorithms=algorithms, callbacks=callbacks)
    """

    def __init__(
        self,
        folder: str = '{run_name}/history',
        flush_interval: str | int = '100ba',
        max_queued_chunks: int = 4096,
        upload_to: str | None = None,
        outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
    ) -> None:
        interval = parse_time(flush_interval, (TimeUnit.BATCH,), 'flush_interval')
        if interval.value <= 0:
            raise ValueError(f'flush_interval must be a positive number of batches, e.g. "100ba"; got {flush_interval!r}.')
        if max_queued_chunks <= 0:
            raise ValueError(f'max_queued_chunks must be > 0, got {max_queued_chunks}.')
        self.folder_template = folder
        self.flush_every = int(interval.value)
        self.max_queued_chunks = max_queued_chunks
        self.upload_to = upload_to
        self.outage_limit_s = outage_limit_s
        self.upload_error: RemoteStoreError | None = None
        self._uploader: DurableUploader | None = None
        self.folder: Path | None = None
        self._algorithm: LossReweighting | None = None
        self._writer: HistoryWriter | None = None
        self._microbatch = 0
        self._uploaded = 0
        self._warned_ids = False

    def fit_start(self, state: State, logger: Logger) -> None:
        algorithms = [a for a in state.algorithms if isinstance(a, LossReweighting)]
        if not algorithms:
            raise ValueError(
                'LossHistory needs LossReweighting among the algorithms (LossReweighting("uniform") for a baseline).',
            )
        self._algorithm = algorithms[0]
        rank = dist.get_global_rank()
        root = Path(self.folder_template.format(run_name=state.run_name))
        self.folder = root / f'rank{rank}'
        self.folder.mkdir(parents=True, exist_ok=True)
        resume_step = int(state.timestamp.batch.value)
        dropped = truncate_history(self.folder, resume_step)
        if dropped:
            log.info(f'LossHistory: dropped {dropped} rows at or after step {resume_step} from an earlier attempt.')
        a = self._algorithm
        metadata = {
            'reweigh': json.dumps({
                'run_name': state.run_name, 'strategy': a.strategy, 'r': a.r, 'delta': a.delta,
                'warmup': str(a.warmup), 'token_normalize': a.token_normalize, 'world_size': dist.get_world_size(),
            }),
        }
        self._writer = HistoryWriter(
            self.folder, rank, {k.encode(): v.encode() for k, v in metadata.items()}, self.max_queued_chunks,
        )
        if self.upload_to is not None:
            remote = self.upload_to.format(run_name=state.run_name)
            self._uploader = DurableUploader(remote, self.outage_limit_s, name=f'history rank{rank}',
                                             staging_dir=str(self.folder))
            self._uploaded = 0
            self._sync_remote(resume_step)

    def _sync_remote(self, resume_step: int) -> None:
        """Make this rank's uploaded parts equal the local ones: rows an interrupted attempt uploaded at or
        past ``resume_step`` are dropped (a part with none left stays as an empty part; object stores here
        cannot delete), and local parts the bucket lacks (written during an outage) go up."""
        assert self._uploader is not None and self.folder is not None
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

    def batch_start(self, state: State, logger: Logger) -> None:
        self._microbatch = 0

    def after_loss(self, state: State, logger: Logger) -> None:
        if self._writer is None or self._algorithm is None or self._algorithm.last_microbatch is None:
            return
        record = self._algorithm.last_microbatch
        n = record.losses.shape[0]
        batch = state.batch if isinstance(state.batch, dict) else {}
        missing = torch.full((n,), -1, dtype=torch.int64, device=record.losses.device)
        if 'sample_id' not in batch and not self._warned_ids:
            warnings.warn('LossHistory: batches carry no "sample_id"; rows are recorded with sample_id -1.',
                          stacklevel=2)
            self._warned_ids = True
        per_sample = {
            'sample_id': batch.get('sample_id', missing), 'domain': batch.get('domain', missing), 'tokens': record.tokens,
            'loss': record.losses, 'weight': record.weights,
        }
        ints = torch.stack([per_sample[c].reshape(n).to(torch.int64) for c in INT_COLUMNS])
        floats = torch.stack([per_sample[c].reshape(n).float() for c in FLOAT_COLUMNS])
        ready = None
        if ints.is_cuda:
            ints = to_host_async(ints)
            floats = to_host_async(floats)
            ready = torch.cuda.Event()
            ready.record()
        self._writer.put(
            HistoryChunk(int(state.timestamp.batch.value), self._microbatch, ints, floats, record.r, record.active, ready),
        )
        self._microbatch += 1

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._writer is None:
            return
        if int(state.timestamp.batch.value) % self.flush_every == 0:
            self._writer.flush(wait=False)
        self._upload_finished(state, logger)

    def state_dict(self) -> dict[str, Any]:
        if self._writer is not None:
            self._writer.flush(wait=True)
        return {}

    def fit_end(self, state: State, logger: Logger) -> None:
        self.close(state, logger)

    def close(self, state: State, logger: Logger) -> None:
        """Write and upload what is left (waiting for the store up to the outage limit). Composer swallows
        errors raised here, so an upload that gave up is kept in :attr:`upload_error`."""
        uploader, self._uploader = self._uploader, None
        if self._writer is not None:
            self._writer.close()
            if uploader is not None and uploader.error is None:
                self._queue_finished(uploader)
            self._writer = None
        if uploader is not None:
            try:
                uploader.close()
            except RemoteStoreError as e:
                self.upload_error = e

    def _upload_finished(self, state: State, logger: Logger) -> None:
        if self._uploader is not None and self._writer is not None:
            self._uploader.check()  # raises if an upload gave up
            self._queue_finished(self._uploader)

    def _queue_finished(self, uploader: DurableUploader) -> None:
        assert self._writer is not None
        finished = self._writer.finished
        for path in finished[self._uploaded:]:
            uploader.put(path, f'{path.parent.name}/{path.name}')
        self._uploaded = len(finished)


def to_host_async(t: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of the CUDA tensor ``t``, started without waiting for it (record an event to know
    when it is ready)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
