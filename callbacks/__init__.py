"""Composer callbacks: the per-sample loss history, metrics over time in a file, exact RNG state on resumption,
checkpoints mirrored to object storage, stopping with a checkpoint on preemption, and online domain mixing.

Example:
    >>> from reweigh.algorithms import LossReweighting
    >>> from reweigh.callbacks import LossHistory, MetricsLog, RestoreRngOnResume
    >>> callbacks = [LossHistory(folder='runs/{run_name}/history'), RestoreRngOnResume()]
    >>> loggers = [MetricsLog('runs/{run_name}/metrics.jsonl')]
    >>> algorithms = [LossReweighting('linupper', warmup='100ba')]
    >>> # composer.Trainer(..., algorithms=algorithms, callbacks=callbacks, loggers=loggers)
"""

from reweigh.callbacks.history import LossHistory
from reweigh.callbacks.metrics_log import MetricsLog
from reweigh.callbacks.mirror import MirrorCheckpoints
from reweigh.callbacks.mixing import OnlineMixing
from reweigh.callbacks.preemption import Preemption
from reweigh.callbacks.rng import RestoreRngOnResume

__all__ = ['LossHistory', 'MetricsLog', 'MirrorCheckpoints', 'OnlineMixing', 'Preemption', 'RestoreRngOnResume']
