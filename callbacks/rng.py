"""Exact mid-epoch RNG state when a run resumes from a checkpoint."""

from __future__ import annotations

from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import reproducibility

__all__ = ['RestoreRngOnResume']


class RestoreRngOnResume(Callback):
    """Restore the RNG state (dropout masks, ...) when a run resumes mid-epoch from a checkpoint.

    Composer restores the RNG state on resumption at an epoch boundary, or mid-epoch when it replays
    ("spins") the dataloader. With a dataset that resumes itself, as Streaming's does, it skips the
    replay and the RNG state too, so a resumed run's dropout diverges from the uninterrupted run. This
    callback saves every rank's RNG state with each checkpoint and restores it before the first batch
    after loading one, which makes a resumed run equal to an uninterrupted one.

    Example:
        >>> from reweigh.callbacks import RestoreRngOnResume
        >>> callbacks = [RestoreRngOnResume()]  # composer.Trainer(..., callbacks=callbacks)
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {'rng': reproducibility.get_rng_state()}  # a collective: Composer calls this on every rank

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get('rng')

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._pending is not None:
            reproducibility.load_rng_state(self._pending)
            self._pending = None
