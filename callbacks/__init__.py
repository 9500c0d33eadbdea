"""Composer callbacks: the per-sample loss history, and exact RNG state on resumption.

Example:
    >>> from reweigh.algorithms import LossReweighting
    >>> from reweigh.callbacks import LossHistory, RestoreRngOnResume
    >>> callbacks = [LossHistory(folder='runs/{run_name}/history'), RestoreRngOnResume()]
    >>> algorithms = [LossReweighting('linupper', warmup='100ba')]
    >>> # composer.Trainer(..., algorithms=algorithms, callbacks=callbacks)
"""

from reweigh.callbacks.history import LossHistory
from reweigh.callbacks.rng import RestoreRngOnResume

__all__ = ['LossHistory', 'RestoreRngOnResume']
