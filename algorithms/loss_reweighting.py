"""The Composer adapter: :class:`LossReweighting` replaces the training loss with its reweighted form."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from composer.core import Algorithm, Event, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)
from reweigh.algorithms.deferred_metrics import DeferredMetrics
from reweigh.algorithms.gather import world_size
from reweigh.algorithms.losses import PerSampleLoss, per_sample_loss_from
from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.algorithms.step import MicrobatchWeights, ReweightedMicrobatch
from reweigh.algorithms.times import parse_time

log = logging.getLogger(__name__)

__all__ = ['DEFAULT_WARMUP', 'LossReweighting', 'composer_progress', 'composer_step', 'parse_warmup']

_WARMUP_UNITS = (TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN, TimeUnit.EPOCH, TimeUnit.DURATION)
DEFAULT_WARMUP = f'{DEFAULT_WARMUP_STEPS}ba'
"""The core's default warm-up as a Composer time."""
_EVENTS = frozenset((Event.FIT_START, Event.BATCH_START, Event.AFTER_LOSS, Event.BATCH_END, Event.FIT_END))
"""The events :class:`LossReweighting` runs on: a set, so that matching each of the loop's events hashes once instead of
calling ``Event.__eq__`` (Python code) against each."""


def parse_warmup(warmup: str | int | Time) -> Time:
    """Parse a warm-up length: a Composer time string (``'1000ba'``, ``'0.05dur'``, ``'1000000tok'``,
    ``'100sp'``, ``'1ep'``), a :class:`~composer.core.Time`, or an int number of batches.

    Raises:
        ValueError: If the value cannot be parsed, is negative, or uses an unsupported unit.

    Example:
        >>> from reweigh.algorithms import parse_warmup
        >>> parse_warmup('1000ba')
        Time(1000, TimeUnit.BATCH)
    """
    return parse_time(warmup, _WARMUP_UNITS, 'warmup')


class LossReweighting(Algorithm):
    """Dynamic loss-based sample reweighting (Sow et al., ICLR 2025) as a Composer algorithm.

    At ``Event.AFTER_LOSS`` the per-sample losses of the (micro)batch are gathered over all ranks,
    turned into weights with :func:`~reweigh.algorithms.compute_sample_weights` (the framework-free step,
    :func:`~reweigh.algorithms.step.reweight_microbatch`, does both), and ``state.loss``
    is replaced with ``world_size * sum_i w_i l_i`` over this rank's samples, so that after DDP's
    gradient averaging the update is ``sum_i w_i grad(l_i)`` over the global (micro)batch. The weights
    are constants in the backward pass.

    * Fast path: with :class:`~reweigh.models.ReweighCausalLM` (or any model whose ``loss()``
      stores a :class:`~reweigh.algorithms.PerSampleLoss` in ``outputs['per_sample_loss']``) the
      per-sample losses come for free. Generic path: otherwise they are computed from
      ``state.outputs`` logits and ``state.batch['labels']`` (one extra cross-entropy pass).
    * Warm-up: before ``warmup`` has elapsed, and always for ``strategy='uniform'``, the model's own
      loss is left untouched (so such runs equal plain training bit for bit); weights and metrics are
      still computed and logged.
    * Microbatching: weights are normalised per microbatch over all ranks; each microbatch's
      reweighted loss is a weighted mean, which Composer scales by the microbatch's share of the batch.
      The update of a step is ``sum_k (N_k / N) sum_{i in k} w_i grad(l_i)`` over the global
      microbatches ``k`` (``N_k`` samples each, ``N`` in the batch). With
      ``Trainer(accumulate_train_batch_on_tokens=True)`` (llm-foundry's default) Composer scales each
      rank's microbatch loss by ``t_k / T_bar`` instead (its tokens over the rank-mean tokens of the
      batch, as the data spec's ``get_num_tokens_in_batch(token_type='loss_generating')`` counts them),
      which would give samples on a rank or microbatch with more tokens more weight than ``w_i``; the
      algorithm multiplies its loss by ``(n_k / t_k) * (T / N)`` (``n_k`` the rank's microbatch samples,
      ``T / N`` the batch's tokens per sample over all ranks: one all-reduce per batch, no host sync) so
      that the update is the same as with sample accumulation. A microbatch with no loss-generating
      tokens gets Composer's factor 0 and cannot be corrected.
    * Non-finite losses get weight 0 and are counted; if every loss is non-finite the step's loss
      stays non-finite.

    Logged each batch (under ``loss_reweighting/``): ``r``, ``active`` (1 once reweighting is on),
    ``weight_entropy``, ``ess`` (effective sample size ``1/sum w^2`` over the batch size),
    ``weight_min``, ``weight_max``, ``nonfinite_losses`` and ``mean_loss`` (the plain mean of the
    per-sample losses, what uniform training reports), averaged (min/max/summed) over microbatches.
    On CUDA they reach the logger one step late so the loop never waits for the device.
    After each microbatch, :attr:`last_microbatch` holds the losses and weights this rank used (read
    by :class:`~reweigh.callbacks.LossHistory`).

    Args:
        strategy (str): A registered strategy: ``'uniform'``, ``'linupper'`` (the paper's best),
            ``'quadratic'``, ``'extremes'``, ``'upper'``, or one added with
            :func:`~reweigh.algorithms.register_strategy`. Default: ``'linupper'``.
        r (float): Softmax temperature, ``> 0``; large values tend to uniform. Default: ``1.0``.
        delta (float): Half-width of the loss normalisation interval, ``> 0``. Default: ``1.0``.
        warmup (str | int | Time): Uniform training before reweighting starts, as a Composer time
            (``'1000ba'``, ``'0.05dur'``, ``'1000000tok'``) or an int number of batches.
            Default: ``'1000ba'``.
        r_schedule (Callable[[State], float], optional): Multiplier on ``r`` as a function of the
            training state, e.g. any Composer scheduler such as
            ``LinearScheduler(alpha_i=10.0, alpha_f=1.0, t_max='2000ba')`` to start soft and sharpen.
            Default: ``None`` (constant ``r``).
        token_normalize (bool): Fold token counts into the weights (``w_i n_i / sum w_j n_j``), so that
            uniform weights give the token-mean loss. Default: ``False`` (sample-mean).
        fused (bool | str): Compile the step after the all-gather into one region (:mod:`reweigh.algorithms.fused`):
            ``True``, ``False``, or ``'auto'`` (on CUDA). Default: ``'auto'``.

    Raises:
        ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, a bad ``warmup`` or ``fused``.

    Example:
        >>> from reweigh.algorithms import LossReweighting
        >>> algorithm = LossReweighting(strategy='linupper', r=1.0, warmup='100ba')
        >>> # trainer = composer.Trainer(model=..., train_dataloader=..., algorithms=[algorithm])
        >>> algorithm.current_r(None)
        1.0
    """

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        r: float = DEFAULT_R,
        delta: float = DEFAULT_DELTA,
        warmup: str | int | Time = DEFAULT_WARMUP,
        r_schedule: Callable[[State], float] | None = None,
        token_normalize: bool = DEFAULT_TOKEN_NORMALIZE,
        fused: bool | Literal['auto'] = 'auto',
    ) -> None:
        if r_schedule is not None and not callable(r_schedule):
            raise ValueError(f'r_schedule must be callable (e.g. a Composer scheduler), got {r_schedule!r}.')
        self.warmup = parse_warmup(warmup)
        self.reweighter = Reweighter(strategy, r, delta, self.warmup.to_timestring(), r_schedule, token_normalize, fused)
        """The framework-free core this algorithm drives (its settings, step, metrics and checkpointed state)."""
        self._metrics = DeferredMetrics()
        self._warned_generic = False
        self._token_spec: Any = None  # the Trainer's DataSpec while it accumulates on tokens
        self._tokens_per_sample: torch.Tensor | None = None  # T / N of the current batch, all ranks
        self._world: int | None = None  # data-parallel ranks during fit (asking torch costs ~10 us a step)

    strategy = property(lambda self: self.reweighter.strategy, doc='The strategy (see :class:`Reweighter`).')
    r = property(lambda self: self.reweighter.r, doc='The softmax temperature before any schedule.')
    delta = property(lambda self: self.reweighter.delta, doc='Half-width of the loss normalisation interval.')
    r_schedule = property(lambda self: self.reweighter.r_schedule, doc='The multiplier on ``r`` (a function of the State).')
    token_normalize = property(lambda self: self.reweighter.token_normalize, doc='Whether token counts are folded in.')

    @property
    def last_microbatch(self) -> MicrobatchWeights | None:
        """The losses and weights this rank used in the latest microbatch (the core's record), ``None`` before one."""
        return None if self.reweighter.last is None else self.reweighter.last.record

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(strategy={self.strategy!r}, r={self.r}, delta={self.delta}, '
            f'warmup={self.warmup!r}, r_schedule={self.r_schedule!r}, token_normalize={self.token_normalize})'
        )

    def match(self, event: Event, state: State) -> bool:
        return event in _EVENTS

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.AFTER_LOSS:  # identity: Composer's Event.__eq__ is Python code, run for every event
            self._reweight(state)
        elif event is Event.BATCH_START:
            self.reweighter.reset_metrics()  # a microbatch size search may have left statistics of abandoned tries
            needed = self._token_spec is not None and self.strategy != 'uniform' and not self.in_warmup(state)
            self._tokens_per_sample = self._batch_tokens_per_sample(state) if needed else None
        elif event is Event.BATCH_END:
            self._log_batch(state, logger)
        elif event is Event.FIT_START:
            self._world = world_size()  # Composer set up torch.distributed before the fit, for all of it
            trainer = _calling_trainer()
            on_tokens = trainer is not None and bool(getattr(trainer, 'accumulate_train_batch_on_tokens', False))
            self._token_spec = getattr(trainer, '_train_data_spec', None) if on_tokens else None
            if on_tokens and self._token_spec is None:
                raise ValueError(
                    'LossReweighting cannot find the data spec of a Trainer with accumulate_train_batch_on_tokens=True '
                    'to keep its update exact; pass accumulate_train_batch_on_tokens=False.',
                )
        else:
            self._token_spec = self._tokens_per_sample = self._world = None
            self._metrics.flush(logger)

    def _batch_tokens_per_sample(self, state: State) -> torch.Tensor:
        """Loss-generating tokens per sample of the whole batch over all ranks (what Composer's ``T_bar / N_bar`` is)."""
        spec = self._token_spec
        counts = torch.tensor(
            [spec.get_num_samples_in_batch(state.batch), spec.get_num_tokens_in_batch(state.batch, token_type='loss_generating')],
            dtype=torch.float64,
        )
        counts = state.device.tensor_to_device(counts)
        if dist.get_world_size() > 1:
            dist.all_reduce(counts, reduce_operation='SUM')
        return counts[1] / counts[0]

    def _undo_token_scaling(self, state: State, loss: torch.Tensor) -> torch.Tensor:
        """``loss * (n_k / t_k) * (T / N)``: Composer's token factor ``t_k / T_bar`` becomes the sample factor ``n_k / N_bar``."""
        spec, tokens_per_sample = self._token_spec, self._tokens_per_sample
        if spec is None or tokens_per_sample is None:
            return loss
        samples = spec.get_num_samples_in_batch(state.batch)
        tokens = spec.get_num_tokens_in_batch(state.batch, token_type='loss_generating')
        if isinstance(tokens, torch.Tensor):  # a data spec that counts on the device: stay there
            factor = torch.where(tokens > 0, samples * tokens_per_sample / tokens.clamp(min=1), 1.0)
        elif tokens > 0:
            factor = tokens_per_sample * (samples / tokens)
        else:  # Composer scales this microbatch by 0 anyway
            return loss
        return loss * factor.to(loss.dtype)

    def in_warmup(self, state: State) -> bool:
        """Whether ``state`` is still inside the uniform warm-up."""
        return self.reweighter.in_warmup(composer_progress(state, self.reweighter))

    def current_r(self, state: State | None) -> float:
        """The temperature in use at ``state``: ``r`` times ``r_schedule(state)`` if one is set.

        Raises:
            ValueError: If the schedule yields a temperature that is not > 0.
        """
        return self.reweighter.current_r(None if state is None else composer_progress(state, self.reweighter))

    def _reweight(self, state: State) -> None:
        if not isinstance(state.loss, torch.Tensor):
            raise ValueError(
                f'LossReweighting needs a model whose loss() returns a single tensor, got {type(state.loss).__name__}.',
            )
        step = composer_step(self.reweighter, state, self.per_sample_loss(state), world=self._world)
        if step.loss is not None:
            state.loss = self._undo_token_scaling(state, step.loss)

    def per_sample_loss(self, state: State) -> PerSampleLoss:
        """This microbatch's per-sample losses (:func:`~reweigh.algorithms.losses.per_sample_loss_from`), saying once
        when the model does not provide them."""
        per_sample, fused = per_sample_loss_from(state.outputs, state.batch)
        if not fused and not self._warned_generic:
            log.info(
                'LossReweighting: the model does not expose per-sample losses; computing them from the '
                'logits (one extra cross-entropy pass). Use ReweighCausalLM for the fast path.',
            )
            self._warned_generic = True
        return per_sample

    def _log_batch(self, state: State, logger: Logger) -> None:
        report = self.reweighter.report()
        if report is not None:
            self._metrics.push(int(state.timestamp.batch.value) - 1, *report, logger)

    @property
    def nonfinite_total(self) -> int:
        """Number of non-finite per-sample losses seen since the start of training (synchronises)."""
        return self.reweighter.nonfinite_total

    def state_dict(self) -> dict[str, Any]:
        return self.reweighter.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reweighter.load_state_dict(state, owner='LossReweighting')


def composer_progress(state: State, reweighter: Reweighter) -> Progress:
    """Where a Composer run is, for ``reweighter``: its timestamp's batches, samples, tokens and epochs, the elapsed
    share of ``max_duration`` when the warm-up is measured in it (``None`` otherwise, and until known: Composer
    takes about 10 us to compute it), and the ``State`` itself as the ``r_schedule`` clock."""
    ts = state.timestamp
    needed = reweighter.warmup.unit == 'dur' and state.max_duration is not None
    elapsed = state.get_elapsed_duration() if needed else None
    return Progress(int(ts.batch.value), int(ts.sample.value), int(ts.token.value), int(ts.epoch.value),
                    None if elapsed is None else float(elapsed.value), state)


def composer_step(reweighter: Reweighter, state: State, per_sample: PerSampleLoss, *,
                  world: int | None = None) -> ReweightedMicrobatch:
    """:meth:`Reweighter.step` on a Composer microbatch: its progress, the device microbatch size as the gather's
    capacity (``None`` while Composer searches for it), and the batch's ``sample_id`` and ``domain`` for the record;
    ``world``, the data-parallel ranks, where the caller knows them."""
    capacity = state.device_train_microbatch_size
    capacity = max(capacity, per_sample.loss.shape[0]) if isinstance(capacity, int) else None
    batch = state.batch if isinstance(state.batch, Mapping) else {}
    return reweighter.step(per_sample.loss, per_sample.tokens, composer_progress(state, reweighter), capacity=capacity,
                           sample_id=batch.get('sample_id'), domain=batch.get('domain'), world=world)


def _calling_trainer() -> Any:
    """The Composer ``Trainer`` whose engine is running this event, found on the call stack (``None`` if none).

    Composer's ``State`` does not record ``accumulate_train_batch_on_tokens`` nor the train ``DataSpec``;
    only the Trainer (whose ``fit`` runs ``Event.FIT_START``) knows them.
    """
    from composer import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get('self')
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame
