"""Log device-resident scalars without making the training loop wait for the device."""

from __future__ import annotations

from typing import NamedTuple

import torch
from composer.loggers import Logger

from reweigh.algorithms.step import MetricValues

__all__ = ['DeferredMetrics']


class _Pending(NamedTuple):
    step: int
    names: tuple[str, ...]
    values: torch.Tensor
    ready: torch.cuda.Event | None
    extra: dict[str, float]


class DeferredMetrics:
    """Hands scalars to a Composer logger one step late when they live on a CUDA device.

    ``push`` stacks the step's 0-d tensors and starts an asynchronous copy into pinned host
    memory; the values are logged (under their own step) on the next ``push`` or on ``flush``, by
    which time the copy has long finished, so the training thread never blocks on the device.
    CPU tensors are logged at once.
    """

    def __init__(self) -> None:
        self._pending: _Pending | None = None

    def push(self, step: int, tensors: MetricValues, extra: dict[str, float], logger: Logger) -> None:
        """Queue this step's metrics (the core's report: one vector) and log the previous step's."""
        if self._pending is not None:
            self.flush(logger)
        names, values = tensors.names, tensors.vector  # float32, without autograd: the step's statistics
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            self._pending = _Pending(step, names, host, ready, extra)
        else:
            self._pending = _Pending(step, names, values, None, extra)
            self.flush(logger)

    def flush(self, logger: Logger) -> None:
        """Log whatever is still queued."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.ready is not None:
            pending.ready.synchronize()
        metrics: dict[str, float] = dict(zip(pending.names, pending.values.tolist()))
        metrics.update(pending.extra)
        logger.log_metrics(metrics, step=pending.step)
