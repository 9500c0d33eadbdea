"""The Composer adapter: :class:`LossReweighting` replaces the training loss with its reweighted form."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

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
    METRIC_PREFIX,
)
from reweigh.algorithms.deferred_metrics import DeferredMetrics
from reweigh.algorithms.losses import PER_SAMPLE_LOSS_KEY, PerSampleLoss, per_sample_loss
from reweigh.algorithms.step import (
    MicrobatchWeights,
    WeightMetrics,
    reweight_microbatch,
    scheduled_r,
)
from reweigh.algorithms.times import parse_time
from reweigh.algorithms.weights import validate_weight_args

log = logging.getLogger(__name__)

__all__ = ['DEFAULT_WARMUP', 'LossReweighting', 'parse_warmup']

_WARMUP_UNITS = (TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN, TimeUnit.EPOCH, TimeUnit.DURATION)
DEFAULT_WARMUP = f'{DEFAULT_WARMUP_STEPS}ba'
"""The core's default warm-up as a Composer time."""


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

    Raises:
        ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, or a bad ``warmup``.

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
    ) -> None:
        validate_weight_args(strategy, r, delta)
        if r_schedule is not None and not callable(r_schedule):
            raise ValueError(f'r_schedule must be callable (e.g. a Composer scheduler), got {r_schedule!r}.')
        self.strategy = strategy
        self.r = float(r)
        self.delta = float(delta)
        self.warmup = parse_warmup(warmup)
        self.r_schedule = r_schedule
        self.token_normalize = bool(token_normalize)
        self._metrics = DeferredMetrics()
        self._batch_metrics = WeightMetrics()
        self._nonfinite_total = 0.0
        self._warned_generic = False
        self._token_spec: Any = None  # the Trainer's DataSpec while it accumulates on tokens
        self._tokens_per_sample: torch.Tensor | None = None  # T / N of the current batch, all ranks
        self.last_microbatch: MicrobatchWeights | None = None

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(strategy={self.strategy!r}, r={self.r}, delta={self.delta}, '
            f'warmup={self.warmup!r}, r_schedule={self.r_schedule!r}, token_normalize={self.token_normalize})'
        )

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.FIT_START, Event.BATCH_START, Event.AFTER_LOSS, Event.BATCH_END, Event.FIT_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.AFTER_LOSS:
            self._reweight(state)
        elif event == Event.BATCH_START:
            self._batch_metrics = WeightMetrics()
            needed = self._token_spec is not None and self.strategy != 'uniform' and not self.in_warmup(state)
            self._tokens_per_sample = self._batch_tokens_per_sample(state) if needed else None
        elif event == Event.BATCH_END:
            self._log_batch(state, logger)
        elif event == Event.FIT_START:
            trainer = _calling_trainer()
            on_tokens = trainer is not None and bool(getattr(trainer, 'accumulate_train_batch_on_tokens', False))
            self._token_spec = getattr(trainer, '_train_data_spec', None) if on_tokens else None
            if on_tokens and self._token_spec is None:
                raise ValueError(
                    'LossReweighting cannot find the data spec of a Trainer with accumulate_train_batch_on_tokens=True '
                    'to keep its update exact; pass accumulate_train_batch_on_tokens=False.',
                )
        else:
            self._token_spec = self._tokens_per_sample = None
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
        if self.warmup.unit == TimeUnit.DURATION:
            elapsed = state.get_elapsed_duration()
            return elapsed is None or elapsed < self.warmup
        return state.timestamp.get(self.warmup.unit) < self.warmup

    def current_r(self, state: State | None) -> float:
        """The temperature in use at ``state``: ``r`` times ``r_schedule(state)`` if one is set.

        Raises:
            ValueError: If the schedule yields a temperature that is not > 0.
        """
        if self.r_schedule is None or state is None:
            return self.r
        return scheduled_r(self.r, self.r_schedule(state), str(state.timestamp.batch))

    def _per_sample_loss(self, state: State) -> PerSampleLoss:
        outputs = state.outputs
        if isinstance(outputs, Mapping) and PER_SAMPLE_LOSS_KEY in outputs:
            return outputs[PER_SAMPLE_LOSS_KEY]
        if not self._warned_generic:
            log.info(
                'LossReweighting: the model does not expose per-sample losses; computing them from the '
                'logits (one extra cross-entropy pass). Use ReweighCausalLM for the fast path.',
            )
            self._warned_generic = True
        logits = outputs.get('logits') if isinstance(outputs, Mapping) else outputs
        batch = state.batch
        if not isinstance(logits, torch.Tensor) or not isinstance(batch, Mapping) or 'labels' not in batch:
            raise ValueError(
                'LossReweighting needs per-sample losses: either outputs["per_sample_loss"] from the model, '
                'or logits (outputs["logits"] or a tensor) together with batch["labels"].',
            )
        return per_sample_loss(logits, batch['labels'])

    def _reweight(self, state: State) -> None:
        if not isinstance(state.loss, torch.Tensor):
            raise ValueError(
                f'LossReweighting needs a model whose loss() returns a single tensor, got {type(state.loss).__name__}.',
            )
        per_sample = self._per_sample_loss(state)
        capacity = state.device_train_microbatch_size
        capacity = max(capacity, per_sample.loss.shape[0]) if isinstance(capacity, int) else None
        step = reweight_microbatch(
            per_sample.loss, per_sample.tokens, strategy=self.strategy, r=self.current_r(state), delta=self.delta,
            active=not self.in_warmup(state) and self.strategy != 'uniform', token_normalize=self.token_normalize,
            capacity=capacity,
        )
        if step.loss is not None:
            state.loss = self._undo_token_scaling(state, step.loss)
        self.last_microbatch = step.record
        self._batch_metrics.add(step.stats, step.record.r, step.record.active)

    def _log_batch(self, state: State, logger: Logger) -> None:
        report = self._batch_metrics.report()
        if report is None:
            return
        tensors, scalars = report
        self._nonfinite_total += tensors[f'{METRIC_PREFIX}/nonfinite_losses']  # a device tensor until a checkpoint asks
        self._metrics.push(int(state.timestamp.batch.value) - 1, tensors, scalars, logger)

    @property
    def nonfinite_total(self) -> int:
        """Number of non-finite per-sample losses seen since the start of training (synchronises)."""
        return int(self._nonfinite_total)

    def state_dict(self) -> dict[str, Any]:
        return {
            'strategy': self.strategy,
            'r': self.r,
            'delta': self.delta,
            'warmup': str(self.warmup),
            'token_normalize': self.token_normalize,
            'nonfinite_total': self.nonfinite_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.state_dict()
        changed = {
            k: (state[k], current[k]) for k in ('strategy', 'r', 'delta', 'warmup', 'token_normalize')
            if k in state and state[k] != current[k]
        }
        if changed:
            warnings.warn(
                'LossReweighting settings differ from the checkpoint; continuing with the new ones: ' +
                ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changed.items()),
                stacklevel=2,
            )
        self._nonfinite_total = float(state.get('nonfinite_total', 0))


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
