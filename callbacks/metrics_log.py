"""Evaluation and training metrics over time, in a file a program can read (``metrics.jsonl``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from composer.core import Event, State, Time
from composer.loggers import Logger, LoggerDestination
from composer.utils import create_interval_scheduler, dist

from reweigh.analysis.runs import EVAL_METRICS, METRICS_FILE, eval_domain, metrics_line, parse_metrics, truncate_metrics
from reweigh.io.uploads import DEFAULT_OUTAGE_LIMIT_S, DurableUploader, RemoteStoreError

__all__ = ['MetricsLog']

log = logging.getLogger(__name__)

_TRAIN_LOSS = 'loss/train/'
_REWEIGHTING = 'loss_reweighting/'
_MIXING = 'mixing/'


class MetricsLog(LoggerDestination):
    """Append every evaluation and the training loss of every step to ``metrics.jsonl``.

    The file's layout is :mod:`reweigh.analysis.runs`'s: one flat JSON object per line, ``eval`` lines
    (``step``, ``tokens``, ``domain``, ``loss``, ``perplexity``) and ``train`` lines (``step``, ``tokens``,
    ``loss``, the ``loss_reweighting/*`` statistics and online mixing's ``mixing/*`` values). Rank 0 writes it
    (every value it records is already reduced over ranks), flushing each line, so a killed run loses at most the line being
    written. When a run resumes from a checkpoint, the lines past the checkpoint's step (written by the
    attempt that died) are dropped before training continues, so every step is in the file once: Composer
    evaluates before it saves a checkpoint, so an evaluation at a checkpoint step is kept, and any later
    one is run again.

    Args:
        path (str): The file; ``{run_name}`` is replaced by the run's name.
        upload_to (str, optional): An object-store folder (``s3://bucket/runs/{run_name}``); the file is
            uploaded there after each evaluation, each checkpoint and at the end, in the background, riding
            out outages (:class:`~reweigh.io.uploads.DurableUploader`). A run resuming on a machine
            without the local file starts from the uploaded one.
        save_interval (str | Time, optional): The Trainer's ``save_interval``, so that the file is uploaded
            with every checkpoint (a run resuming from the bucket then finds the metrics up to its
            checkpoint). Default: upload after evaluations and at the end only.
        outage_limit_s (float): How long an upload may keep failing before training stops with an error
            (kept in :attr:`upload_error` when it happens while closing). Default: 600.

    Example:
        >>> import tempfile
        >>> from reweigh.callbacks import MetricsLog
        >>> metrics_log = MetricsLog(f'{tempfile.mkdtemp()}/{{run_name}}/metrics.jsonl')
        >>> # Trainer(..., loggers=[metrics_log]); then reweigh.analysis.runs.load_run(folder).eval
    """

    def __init__(self, path: str, upload_to: str | None = None, outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
                 save_interval: str | Time | None = None) -> None:
        self.path_template = path
        self.upload_to = upload_to
        self._at_checkpoint = None if save_interval is None else create_interval_scheduler(save_interval)
        self.outage_limit_s = outage_limit_s
        self.upload_error: RemoteStoreError | None = None
        self.path: Path | None = None
        self._file: Any = None
        self._state: State | None = None
        self._uploader: DurableUploader | None = None
        self._pending: dict[int, dict[str, float]] = {}  # train values by step, until the step's tokens are known
        self._tokens: dict[int, int] = {}  # tokens done after each recent step

    def init(self, state: State, logger: Logger) -> None:
        self._state = state

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        self.path = Path(self.path_template.format(run_name=state.run_name))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.upload_to is not None:
            remote = self.upload_to.format(run_name=state.run_name)
            self._uploader = DurableUploader(remote, self.outage_limit_s, name='metrics', staging_dir=str(self.path.parent))
            if not self.path.exists():  # resuming where the earlier attempt ran: start from its upload
                store, name = self._uploader.store, self._uploader.object_name(METRICS_FILE)
                if name in store.list_objects(name):
                    store.download_object(name, str(self.path))
                    last = max((r['step'] for r in parse_metrics(self.path.read_text())), default=0)
                    if last < int(state.timestamp.batch.value):
                        log.warning(f'MetricsLog: the uploaded {METRICS_FILE} ends at step {last}, before the '
                                    f'checkpoint at step {int(state.timestamp.batch.value)}: the steps between are '
                                    'missing from it.')
        step = int(state.timestamp.batch.value)
        self._tokens = {step: int(state.timestamp.token.value)}
        dropped = truncate_metrics(self.path, step)
        if dropped:
            log.info(f'MetricsLog: dropped {dropped} lines past step {step} from an earlier attempt.')
        self._file = open(self.path, 'a')

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._file is None or step is None:
            return
        train: dict[str, float] = {}
        evals: dict[str, dict[str, float]] = {}
        for name, value in metrics.items():
            if name.startswith(_TRAIN_LOSS):
                train['loss' if name == f'{_TRAIN_LOSS}total' else f'loss/{name[len(_TRAIN_LOSS):]}'] = float(value)
            elif name.startswith(_REWEIGHTING) or name.startswith(_MIXING):
                train[name] = float(value)
            elif name.startswith('metrics/') and name.count('/') >= 2:
                label, metric = name[len('metrics/'):].rsplit('/', 1)
                if label != 'train':
                    evals.setdefault(label, {})[EVAL_METRICS.get(metric, metric)] = float(value)
        if train:  # Composer logs a batch's values under the batch's 0-based index
            self._pending.setdefault(step + 1, {}).update(train)
            self._write_pending()
        if evals:  # evaluation runs after `step` batches
            assert self._state is not None
            tokens = int(self._state.timestamp.token.value)
            for label, values in evals.items():
                self._write(metrics_line('eval', step, tokens, values, domain=eval_domain(label)))

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._file is None:
            return
        step = int(state.timestamp.batch.value)
        self._tokens[step] = int(state.timestamp.token.value)
        for old in [s for s in self._tokens if s < step - 8]:
            del self._tokens[old]
        self._write_pending()

    def eval_after_all(self, state: State, logger: Logger) -> None:
        self._upload()

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        if self._at_checkpoint is not None and self._at_checkpoint(state, Event.BATCH_CHECKPOINT):
            self._upload()

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        if self._at_checkpoint is not None and self._at_checkpoint(state, Event.EPOCH_CHECKPOINT):
            self._upload()

    def _write_pending(self) -> None:
        for step in sorted(s for s in self._pending if s in self._tokens):
            self._write(metrics_line('train', step, self._tokens[step], self._pending.pop(step)))
        for stale in [s for s in self._pending if s < min(self._tokens, default=0)]:
            self._write(metrics_line('train', stale, None, self._pending.pop(stale)))

    def _write(self, line: str) -> None:
        self._file.write(line + '\n')
        self._file.flush()

    def _upload(self) -> None:
        if self._uploader is not None and self.path is not None:
            self._uploader.put(self.path, METRICS_FILE)

    def close(self, state: State, logger: Logger) -> None:
        """Write what is pending and upload the file (waiting for the store up to the outage limit). Composer
        swallows errors raised here, so an upload that gave up is kept in :attr:`upload_error`."""
        if self._file is None:
            return
        self._write_pending()
        self._file.close()
        self._file = None
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            self.upload_error = uploader.close_keeping_error((self.path, METRICS_FILE))
