"""The history's writer thread: it turns one rank's queued microbatch chunks into Parquet parts, off the training thread.

The format (part names, columns, metadata) is :mod:`reweigh.history.format`;
:class:`~reweigh.history.recorder.HistoryRecorder` feeds this writer with the core's records.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from reweigh.history.format import FLOAT_COLUMNS, HISTORY_SCHEMA, INT_COLUMNS, part_name, write_part

__all__ = ['HistoryChunk', 'HistoryWriter', 'to_host_async']


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
    """The background thread behind :class:`~reweigh.history.recorder.HistoryRecorder`: one rank's chunks into parts.

    ``put`` queues a chunk (blocking once ``max_queued`` wait); ``flush`` writes everything queued so far as
    one part named after its first and last step (see :mod:`reweigh.history.format`); ``close`` flushes and
    stops. An error in the thread is raised on the caller's next ``put`` or ``flush``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from reweigh.history.writer import HistoryChunk, HistoryWriter
        >>> writer = HistoryWriter(Path(tempfile.mkdtemp()), rank=0, metadata={}, max_queued=8)
        >>> writer.put(HistoryChunk(0, 0, torch.tensor([[7], [1], [12], [-1]]), torch.tensor([[2.5], [1.0]]), 1.0, True, None))
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


def to_host_async(t: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of the CUDA tensor ``t``, started without waiting for it (record an event to know
    when it is ready)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
