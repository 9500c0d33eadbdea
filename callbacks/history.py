"""The Composer callback that records the per-sample loss history (the format and the recorder are :mod:`reweigh.history`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from reweigh.algorithms.deferred_metrics import DeferredMetrics
from reweigh.algorithms.loss_reweighting import LossReweighting, composer_step
from reweigh.algorithms.losses import per_sample_loss_from
from reweigh.algorithms.reweighter import Reweighter
from reweigh.algorithms.times import parse_time
from reweigh.history.format import encode_metadata
from reweigh.history.recorder import DEFAULT_MAX_QUEUED_CHUNKS, HistoryRecorder, dataset_domain_names
from reweigh.io.uploads import DEFAULT_OUTAGE_LIMIT_S, RemoteStoreError

__all__ = ['LossHistory']


class LossHistory(Callback):
    """Record every training sample's loss and weight, per step, as Parquet files.

    With :class:`~reweigh.algorithms.LossReweighting` among the trainer's algorithms it records the core's record
    of each microbatch (the losses and weights the algorithm used); without one (a baseline run) it weighs the
    per-sample losses uniformly with the same core itself, leaving training untouched, and logs the core's
    ``loss_reweighting/*`` statistics as the algorithm would (so a baseline's ``mean_loss`` is the same
    sample-mean as a reweighted run's). The format and the
    recorder are :mod:`reweigh.history`; the domain names of a reweigh dataset's loader go into the parts'
    metadata, so that ``reweigh analyze`` names the domains. Rows are copied off the device asynchronously,
    buffered, and written by a background thread every ``flush_interval`` batches, so training does not wait on disk. At every
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
            :class:`~reweigh.io.uploads.DurableUploader`). A resumed run first makes the uploaded
            parts match the local ones up to the resumption step. Credentials come from the environment
            or the standard cloud config files.
        outage_limit_s (float): How long an upload may keep failing before training stops with an error
            (kept in :attr:`upload_error` when it happens while closing). Default: 600.

    Example:
        >>> from reweigh.algorithms import LossReweighting
        >>> from reweigh.callbacks import LossHistory
        >>> callbacks = [LossHistory(folder='runs/{run_name}/history', flush_interval='50ba')]
        >>> algorithms = [LossReweighting('linupper', warmup='100ba')]  # or [] for a baseline's history
        >>> # composer.Trainer(..., algorithms=algorithms, callbacks=callbacks)
    """

    def __init__(
        self,
        folder: str = '{run_name}/history',
        flush_interval: str | int = '100ba',
        max_queued_chunks: int = DEFAULT_MAX_QUEUED_CHUNKS,
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
        self.folder: Path | None = None
        self._reweighter: Reweighter | None = None
        self._algorithm: LossReweighting | None = None
        self._recorder: HistoryRecorder | None = None
        self._metrics = DeferredMetrics()  # a baseline's statistics

    def fit_start(self, state: State, logger: Logger) -> None:
        self._algorithm = next((a for a in state.algorithms if isinstance(a, LossReweighting)), None)
        # A baseline run: the core weighs uniformly, for the record only (the model's loss is left alone).
        self._reweighter = self._algorithm.reweighter if self._algorithm else Reweighter('uniform', warmup=0)
        rank = dist.get_global_rank()
        root = Path(self.folder_template.format(run_name=state.run_name))
        metadata = encode_metadata(self._reweighter.settings(), run_name=state.run_name, world_size=dist.get_world_size(),
                                   domains=dataset_domain_names(getattr(state.train_dataloader, 'dataset', None)))
        upload = self.upload_to.format(run_name=state.run_name) if self.upload_to is not None else None
        self._recorder = HistoryRecorder(root, rank, metadata, int(state.timestamp.batch.value),
                                         max_queued_chunks=self.max_queued_chunks, upload_to=upload,
                                         outage_limit_s=self.outage_limit_s)
        self.folder = self._recorder.folder

    def after_loss(self, state: State, logger: Logger) -> None:
        if self._recorder is None or self._reweighter is None:
            return
        if self._algorithm is None:
            per_sample, _ = per_sample_loss_from(state.outputs, state.batch)
            composer_step(self._reweighter, state, per_sample._replace(loss=per_sample.loss.detach()))
        if self._reweighter.last is not None:
            mix = state.batch.get('mix') if isinstance(state.batch, Mapping) else None  # an online-mixing stream's
            self._recorder.record(int(state.timestamp.batch.value), self._reweighter.last.record, mix)

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._algorithm is None and self._reweighter is not None:
            self._reweighter.reset_metrics()  # a microbatch size search may have left statistics of abandoned tries

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._recorder is None:
            return
        if self._algorithm is None and (report := self._reweighter.report()) is not None:
            self._metrics.push(int(state.timestamp.batch.value) - 1, *report, logger)
        if int(state.timestamp.batch.value) % self.flush_every == 0:
            self._recorder.flush(wait=False)
        self._recorder.upload_finished()

    def state_dict(self) -> dict[str, Any]:
        if self._recorder is not None:
            self._recorder.flush(wait=True)
        return {}

    def fit_end(self, state: State, logger: Logger) -> None:
        self._metrics.flush(logger)
        self.close(state, logger)

    def close(self, state: State, logger: Logger) -> None:
        """Write and upload what is left (waiting for the store up to the outage limit). Composer swallows
        errors raised here, so an upload that gave up is kept in :attr:`upload_error`."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close()
            self.upload_error = recorder.upload_error
