"""Preemption: on SIGTERM (or SIGUSR1), finish the step, save a checkpoint there, and stop, losing no step.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM, then kill the job after a grace period. With
:class:`Preemption` among the callbacks and its :meth:`Preemption.save_interval` as the ``Trainer``'s, a signal
sets a flag and nothing else; at the end of the step during which it arrived (on several ranks: at the next step
that is a multiple of ``check_every``, when the ranks agree through one all-reduce of that flag, so that no step
pays a host sync) the ``Trainer``'s checkpoint saver saves at that step, and before the next step starts the
callback raises :class:`Preempted`. Closing the trainer then flushes the history and metrics and finishes the
uploads of a remote save folder, as at the end of any run; ``reweigh train`` exits with :data:`PREEMPTED_EXIT_CODE`,
and the same command resumes from that step.

Example:
    >>> import os, signal
    >>> from reweigh.callbacks.preemption import Preemption
    >>> preemption = Preemption(check_every=1)
    >>> preemption.install()
    >>> os.kill(os.getpid(), signal.SIGTERM)  # what the scheduler does: training would stop after this step
    >>> preemption.signal_name
    'SIGTERM'
    >>> preemption.uninstall()
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist

__all__ = ['PREEMPTED_EXIT_CODE', 'SIGNALS', 'Preempted', 'Preemption']

PREEMPTED_EXIT_CODE = 75
"""The exit code of ``reweigh train`` stopped by a signal after saving its checkpoint (``EX_TEMPFAIL``: run it
again to resume)."""

SIGNALS = ('SIGTERM', 'SIGUSR1')
"""The signals that stop a run at the next step (SIGUSR1: what SLURM sends with ``--signal=USR1@SECONDS``)."""


class Preempted(Exception):  # noqa: N818 (an event that ends the run, not an error of it)
    """Training stopped on a signal, after saving a checkpoint at ``step``."""

    def __init__(self, signal_name: str, step: int) -> None:
        super().__init__(f'stopped by {signal_name} after step {step}, with a checkpoint there')
        self.signal_name, self.step = signal_name, step


class Preemption(Callback):
    """Stop at a step boundary with a checkpoint when the process gets SIGTERM or SIGUSR1.

    Args:
        check_every (int): On several ranks, the steps between the ranks' agreement on whether to stop (one
            all-reduce of a flag; size it so that this many steps, a checkpoint and its upload fit in the grace
            period). One rank checks after every step, without a sync. Default: ``10``.

    Raises:
        ValueError: For ``check_every < 1``.
    """

    def __init__(self, check_every: int = 10) -> None:
        if check_every < 1:
            raise ValueError(f'preemption check_every must be >= 1 step, got {check_every}.')
        self.check_every = check_every
        self.signal_name: str | None = None
        """The signal received, or ``None``."""
        self.stop_step: int | None = None
        """The step at which training stops (its checkpoint is saved there), once decided."""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch :data:`SIGNALS` (from the main thread only: elsewhere Python cannot, and nothing is caught)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in SIGNALS:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._caught)

    def uninstall(self) -> None:
        """Give the signals back to their earlier handlers."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _caught(self, number: int, frame: Any) -> None:
        self.signal_name = self.signal_name or signal.Signals(number).name

    def save_interval(self, interval: Callable[[State, Event], bool]) -> Callable[[State, Event], bool]:
        """The checkpoint saver's ``interval`` that also saves at the step where training stops."""
        def save_now(state: State, event: Event) -> bool:
            return (self.stop_step == int(state.timestamp.batch.value) and event == Event.BATCH_CHECKPOINT) or \
                interval(state, event)
        return save_now

    def fit_start(self, state: State, logger: Logger) -> None:
        self.install()

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch.value)
        if dist.get_world_size() == 1:
            stop = self.signal_name is not None
        elif step % self.check_every == 0:
            flag = state.device.tensor_to_device(torch.tensor([self.signal_name is not None], dtype=torch.int32))
            dist.all_reduce(flag, reduce_operation='MAX')
            stop = bool(flag.item())
            self.signal_name = self.signal_name or ('SIGTERM' if stop else None)  # a rank told by another rank
        else:
            stop = False
        if stop and state.timestamp < state.max_duration:
            self.stop_step = step

    def before_dataloader(self, state: State, logger: Logger) -> None:
        if self.stop_step is not None:  # the checkpoint of stop_step is saved (by rank 0: the others wait for it)
            dist.barrier()
            raise Preempted(self.signal_name or 'a signal', self.stop_step)

    def fit_end(self, state: State, logger: Logger) -> None:
        self.uninstall()

    def close(self, state: State, logger: Logger) -> None:
        if self.stop_step is None:  # once stopping, later signals (a launcher's, to the ranks) wait until the exit
            self.uninstall()
