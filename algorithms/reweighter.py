"""The reweighting core as one object: the method's settings, warm-up, temperature schedule, the step, metrics and state.

:class:`Reweighter` is what every trainer adapter holds (:class:`~reweigh.algorithms.LossReweighting` for Composer,
:class:`~reweigh.integrations.transformers.ReweighTrainer` for Hugging Face, a hand-written loop): it owns the
strategy, ``r``, ``r_schedule``, ``delta``, the warm-up, token normalisation and the ``loss_reweighting/*`` metrics,
and :meth:`Reweighter.step` runs :func:`~reweigh.algorithms.step.reweight_microbatch` on a microbatch's per-sample
losses. An adapter only translates its trainer's clock into a :class:`Progress` and its events into calls. It
needs torch only.

Example:
    >>> import torch
    >>> from reweigh.algorithms.reweighter import Progress, Reweighter
    >>> reweighter = Reweighter('linupper', warmup='2ba')
    >>> losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> reweighter.step(losses, torch.tensor([4, 4, 4]), Progress(step=0)).loss is None  # warm-up: keep the loss
    True
    >>> out = reweighter.step(losses, torch.tensor([4, 4, 4]), Progress(step=2))
    >>> round(out.loss.item(), 3), [round(w, 3) for w in out.record.weights.tolist()]
    (2.267, [0.155, 0.422, 0.422])
    >>> tensors, scalars = reweighter.report()
    >>> scalars
    {'loss_reweighting/r': 1.0, 'loss_reweighting/active': 0.5}
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)
from reweigh.algorithms.fused import resolve_fused
from reweigh.algorithms.step import (
    MetricValues,
    ReweightedMicrobatch,
    WeightMetrics,
    fold_stats,
    reweight_microbatch,
    scheduled_r,
)
from reweigh.algorithms.weights import STAT_FIELDS, validate_weight_args

__all__ = ['WARMUP_UNITS', 'Progress', 'Reweighter', 'Warmup', 'parse_warmup_string']

WARMUP_UNITS = {'ba': 'step', 'sp': 'samples', 'tok': 'tokens', 'ep': 'epoch', 'dur': 'fraction'}
"""A warm-up's unit (Composer's time-string suffixes) and the :class:`Progress` field it is measured against."""

_NONFINITE = STAT_FIELDS.index('nonfinite')
"""Where the non-finite count sits in a report's vector (the statistics' layout, summed over microbatches)."""
_FOLD_REPORTS = 64
"""Reports whose vectors :class:`Reweighter` keeps apart (no device work per report) before it adds them up."""
_WARMUP = re.compile(r'^(\d+(?:\.\d*)?|\.\d+)(ba|sp|tok|ep|dur)$')


class Progress(NamedTuple):
    """How far training is, in the units a warm-up can be given in; an adapter fills what its trainer knows."""
    step: int
    """Optimizer steps (batches) completed before this microbatch's step."""
    samples: int | None = None
    """Training samples seen before this step."""
    tokens: int | None = None
    """Training tokens seen before this step."""
    epoch: int | None = None
    """Epochs completed."""
    fraction: float | None = None
    """Share of the planned training done, in [0, 1]."""
    clock: Any = None
    """What ``r_schedule`` is called with: the trainer's own state (Composer's ``State``, Hugging Face's global
    step); ``None``: this ``Progress``."""


class Warmup(NamedTuple):
    """A warm-up length: ``value`` in ``unit`` (a key of :data:`WARMUP_UNITS`)."""
    value: float
    unit: str

    def __str__(self) -> str:
        value = self.value if self.unit == 'dur' else int(self.value)
        return f'{value}{self.unit}'


def parse_warmup_string(warmup: str | int | Warmup) -> Warmup:
    """Parse a warm-up: an int number of optimizer steps, or ``'1000ba'``, ``'100000sp'``, ``'1000000tok'``,
    ``'1ep'``, ``'0.05dur'``.

    Raises:
        ValueError: For anything else, or a negative length.

    Example:
        >>> from reweigh.algorithms.reweighter import parse_warmup_string
        >>> parse_warmup_string('0.05dur'), str(parse_warmup_string(100))
        (Warmup(value=0.05, unit='dur'), '100ba')
    """
    if isinstance(warmup, Warmup):
        return warmup
    if isinstance(warmup, int) and not isinstance(warmup, bool):
        if warmup < 0:
            raise ValueError(f'warmup must be >= 0, got {warmup}.')
        return Warmup(warmup, 'ba')
    match = _WARMUP.match(warmup.replace(' ', '')) if isinstance(warmup, str) else None
    if match is None:
        raise ValueError(f'warmup must be a number of steps or a time string such as "1000ba", "1000000tok" or "0.05dur", '
                         f'got {warmup!r}.')
    value, unit = float(match.group(1)), match.group(2)
    if unit != 'dur' and not value.is_integer():
        raise ValueError(f'warmup in {unit} must be a whole number, got {warmup!r}.')
    return Warmup(value, unit)


class Reweighter:
    """Dynamic loss-based sample reweighting (Sow et al., ICLR 2025), framework-free: settings, step, metrics, state.

    Args:
        strategy (str): A registered strategy (``'uniform'``, ``'linupper'``, ``'quadratic'``, ``'extremes'``,
            ``'upper'``, or one added with :func:`~reweigh.algorithms.register_strategy`). Default: ``'linupper'``.
        r (float): Softmax temperature, ``> 0``. Default: ``1.0``.
        delta (float): Half-width of the loss normalisation interval, ``> 0``. Default: ``1.0``.
        warmup (str | int): Uniform training before reweighting starts (:func:`parse_warmup_string`).
            Default: ``1000`` optimizer steps.
        r_schedule (Callable, optional): Multiplier on ``r``, called with :attr:`Progress.clock` (or the
            :class:`Progress` when it has none). Default: constant ``r``.
        token_normalize (bool): Fold token counts into the weights. Default: ``False``.
        fused (bool | str): Run the step after the all-gather as one compiled region
            (:mod:`reweigh.algorithms.fused`): ``True``, ``False``, or ``'auto'``: on CUDA only, where its host time
            cannot hide behind the device's work. Default: ``'auto'``.

    Raises:
        ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, a bad ``warmup``, a
            non-callable ``r_schedule`` or a ``fused`` other than ``True``, ``False`` or ``'auto'``.

    Example:
        >>> from reweigh.algorithms.reweighter import Progress, Reweighter
        >>> reweighter = Reweighter('quadratic', warmup='1000tok')
        >>> reweighter.is_active(Progress(step=3, tokens=999)), reweighter.is_active(Progress(step=4, tokens=1000))
        (False, True)
        >>> reweighter.settings()['warmup']
        '1000tok'
    """

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        r: float = DEFAULT_R,
        delta: float = DEFAULT_DELTA,
        warmup: str | int | Warmup = DEFAULT_WARMUP_STEPS,
        r_schedule: Callable[[Any], float] | None = None,
        token_normalize: bool = DEFAULT_TOKEN_NORMALIZE,
        fused: bool | Literal['auto'] = 'auto',
    ) -> None:
        validate_weight_args(strategy, r, delta)
        resolve_fused(fused, 'cpu')
        if r_schedule is not None and not callable(r_schedule):
            raise ValueError(f'r_schedule must be callable, got {r_schedule!r}.')
        self.strategy = strategy
        self.r = float(r)
        self.delta = float(delta)
        self.warmup = parse_warmup_string(warmup)
        self.r_schedule = r_schedule
        self.token_normalize = bool(token_normalize)
        self.fused = fused
        self._fused_on: dict[torch.device, bool] = {}  # whether the step is compiled on a device
        self.metrics = WeightMetrics()
        """The statistics of the microbatches since the last :meth:`report`."""
        self.last: ReweightedMicrobatch | None = None
        """The latest :meth:`step`'s result without its loss (its ``record`` is what the history stores), ``None``
        before one. The trainer holds the loss, and with it the step's autograd graph, for as long as it needs them."""
        self._reported: list[torch.Tensor] = []  # the metric vectors reported (folded into one now and then)
        self._nonfinite_before = 0.0  # non-finite losses counted before a checkpoint this run resumed from

    def settings(self) -> dict[str, Any]:
        """The method's settings, as checkpoints and the history's metadata record them."""
        return {'strategy': self.strategy, 'r': self.r, 'delta': self.delta, 'warmup': str(self.warmup),
                'token_normalize': self.token_normalize}

    def in_warmup(self, progress: Progress) -> bool:
        """Whether ``progress`` is still inside the warm-up (a ``fraction`` not known yet counts as inside).

        Raises:
            ValueError: If the warm-up's unit is one ``progress`` does not report.
        """
        field = WARMUP_UNITS[self.warmup.unit]
        elapsed = getattr(progress, field)
        if elapsed is None:
            if field == 'fraction':
                return True
            raise ValueError(f'the warm-up is {self.warmup} but the trainer does not report {field}.')
        return elapsed < self.warmup.value

    def is_active(self, progress: Progress) -> bool:
        """Whether the step at ``progress`` reweights: past the warm-up, with a strategy other than ``'uniform'``."""
        return self.strategy != 'uniform' and not self.in_warmup(progress)

    def current_r(self, progress: Progress | None) -> float:
        """The temperature at ``progress``: ``r`` times ``r_schedule`` of its clock, if a schedule is set.

        Raises:
            ValueError: If the schedule yields a temperature that is not > 0.
        """
        if self.r_schedule is None or progress is None:
            return self.r
        clock = progress if progress.clock is None else progress.clock
        return scheduled_r(self.r, self.r_schedule(clock), f'step {progress.step}')

    def step(self, losses: torch.Tensor, tokens: torch.Tensor, progress: Progress, *, capacity: int | None = None,
             sample_id: torch.Tensor | None = None, domain: torch.Tensor | None = None,
             world: int | None = None) -> ReweightedMicrobatch:
        """Weigh one microbatch over all ranks (:func:`~reweigh.algorithms.step.reweight_microbatch`) and add its
        statistics to :attr:`metrics`. With no host sync.

        Args:
            losses (torch.Tensor): ``(n,)`` this rank's per-sample losses (with their graph when reweighting).
            tokens (torch.Tensor): ``(n,)`` their token counts.
            progress (Progress): Where training is (decides warm-up and the temperature).
            capacity (int, optional): Slots per rank in the gather (the device microbatch size). Default: ``n``.
            sample_id (torch.Tensor, optional): ``(n,)`` the samples' ids, for the history record.
            domain (torch.Tensor, optional): ``(n,)`` their domains, for the history record.
            world (int, optional): Data-parallel ranks, when the trainer knows them. Default: asked of
                ``torch.distributed``.

        Returns:
            ReweightedMicrobatch: the loss to backpropagate (``None``: keep the trainer's own), the history
            record and the statistics; also kept, without the loss, as :attr:`last`.
        """
        r = self.current_r(progress)
        device = losses.device  # the key itself: reading its .type costs more, ~18 us right after a forward pass
        fused = self._fused_on.get(device)
        if fused is None:
            fused = self._fused_on[device] = resolve_fused(self.fused, device)
        active = self.is_active(progress)
        out = reweight_microbatch(
            losses, tokens, strategy=self.strategy, r=r, delta=self.delta, active=active,
            token_normalize=self.token_normalize, capacity=capacity, sample_id=sample_id, domain=domain, fused=fused,
            world=world,
        )
        self.metrics.add(out.stats, r, active)
        self.last = ReweightedMicrobatch(None, out.record, out.stats)
        return out

    def reset_metrics(self) -> None:
        """Drop the statistics gathered since the last :meth:`report` (of microbatches a trainer abandoned)."""
        self.metrics.clear()

    def report(self) -> tuple[MetricValues, dict[str, float]] | None:
        """The ``loss_reweighting/*`` metrics since the last report (:meth:`WeightMetrics.report`), or ``None``."""
        report = self.metrics.report()
        if report is not None:  # device tensors until a checkpoint asks: the sum of the reports' vectors
            self._reported.append(report[0].vector)
            if len(self._reported) >= _FOLD_REPORTS:
                self._reported = [fold_stats(self._reported)]
        return report

    @property
    def nonfinite_total(self) -> int:
        """Non-finite per-sample losses reported since the start of training (synchronises)."""
        reported = int(fold_stats(self._reported)[_NONFINITE]) if self._reported else 0
        return int(self._nonfinite_before) + reported

    def state_dict(self) -> dict[str, Any]:
        """The settings and the non-finite count, for a checkpoint (synchronises once)."""
        return {**self.settings(), 'nonfinite_total': self.nonfinite_total}

    def load_state_dict(self, state: dict[str, Any], owner: str = 'Reweighter') -> None:
        """Restore the non-finite count; settings that differ from the checkpoint's are kept, with a warning
        naming them (``owner`` starts it)."""
        current = self.settings()
        changed = {k: (state[k], current[k]) for k in current if k in state and state[k] != current[k]}
        if changed:
            warnings.warn(
                f'{owner} settings differ from the checkpoint; continuing with the new ones: ' +
                ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changed.items()),
                stacklevel=3,
            )
        self._nonfinite_before, self._reported = float(state.get('nonfinite_total', 0)), []
