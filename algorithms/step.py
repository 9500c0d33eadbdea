"""The reweighting step of one microbatch, framework-free (torch only): what every trainer adapter calls.

An adapter (:class:`~reweigh.algorithms.LossReweighting` for Composer,
:class:`~reweigh.integrations.transformers.ReweighTrainer` for Hugging Face, or a hand-written loop) decides
*when* (warm-up, the temperature schedule) and hands this module the microbatch's per-sample losses;
:func:`reweight_microbatch` gathers the global microbatch, computes the weights and the loss to backpropagate,
and returns what the history and the metrics need. :class:`WeightMetrics` turns the microbatches' statistics
into the ``loss_reweighting/*`` metrics every adapter logs. The defaults of the method's settings are in
:mod:`reweigh.algorithms.constants`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch

from reweigh.algorithms.constants import DEFAULT_TOKEN_NORMALIZE, METRIC_PREFIX
from reweigh.algorithms.fused import Fused
from reweigh.algorithms.gather import gather_global_batch, real_slots, world_size
from reweigh.algorithms.losses import weighted_loss
from reweigh.algorithms.strategies import Strategy
from reweigh.algorithms.weights import (
    AVERAGED_STATS,
    STAT_FIELDS,
    SUMMED_STATS,
    WeightStats,
    sample_weights,
    token_normalize_weights,
    validate_weight_args,
    weight_stats,
)

__all__ = [
    'MetricValues',
    'MicrobatchWeights',
    'ReweightedMicrobatch',
    'WeightMetrics',
    'fold_stats',
    'reweight_microbatch',
    'scheduled_r',
    'weigh_global_batch',
]


class MicrobatchWeights(NamedTuple):
    """What the step used for this rank's samples of one microbatch (the history records it)."""
    losses: torch.Tensor
    """``(n,)`` float32 detached per-sample losses."""
    tokens: torch.Tensor
    """``(n,)`` token counts."""
    weights: torch.Tensor
    """``(n,)`` float32 weights; over all ranks they sum to 1 per microbatch (uniform during warm-up)."""
    r: float
    """Temperature in use."""
    active: bool
    """Whether the loss was replaced (after warm-up, strategy not ``uniform``)."""
    sample_id: torch.Tensor | None = None
    """``(n,)`` the samples' ids, if the batch had them."""
    domain: torch.Tensor | None = None
    """``(n,)`` their domain indices, if the batch had them."""


class ReweightedMicrobatch(NamedTuple):
    """The result of :func:`reweight_microbatch`."""
    loss: torch.Tensor | None
    """``world_size * sum_i w_i l_i`` over this rank's samples, to backpropagate; ``None`` when not ``active``
    (the trainer keeps its own loss)."""
    record: MicrobatchWeights
    """This rank's losses and weights, for the history."""
    stats: WeightStats
    """Statistics of the global microbatch's weights, for :class:`WeightMetrics`."""


def scheduled_r(r: float, multiplier: float | None, when: str) -> float:
    """The temperature ``r * multiplier`` of a schedule (``r`` itself without one).

    Raises:
        ValueError: If the result is not > 0 (``when`` says at which point of training, for the message).

    Example:
        >>> from reweigh.algorithms.step import scheduled_r
        >>> scheduled_r(1.0, 4.0, 'step 10')
        4.0
    """
    if multiplier is None:
        return r
    scheduled = r * float(multiplier)
    if not scheduled > 0:
        raise ValueError(f'r_schedule gave r = {scheduled} at {when}; r must stay > 0.')
    return scheduled


def weigh_global_batch(
    losses: torch.Tensor,
    tokens: torch.Tensor,
    local_losses: torch.Tensor,
    r: float | torch.Tensor,
    *,
    start: int,
    strategy: Strategy,
    delta: float,
    token_normalize: bool,
    active: bool,
    world: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Everything the step computes after the all-gather, as one pure function of tensors (what ``fused`` compiles).

    Args:
        losses (torch.Tensor): ``(M,)`` the gathered float32 losses (:attr:`GlobalBatch.losses`).
        tokens (torch.Tensor): ``(M,)`` their token counts, NaN in padding slots (:attr:`GlobalBatch.tokens`; a single
            process without padding passes an integer tensor as it is).
        local_losses (torch.Tensor): ``(n,)`` this rank's losses, detached, in the dtype of the loss to return.
        r (float | torch.Tensor): Temperature in use.
        start (int): Where this rank's samples start in ``losses``.
        strategy (Strategy): The strategy function (``'uniform'``'s while not ``active``).
        delta (float): Half-width of the loss normalisation interval.
        token_normalize (bool): Fold token counts into the weights.
        active (bool): Whether to compute the loss to backpropagate.
        world (int): Data-parallel ranks.

    Returns:
        tuple: what :func:`~reweigh.algorithms.losses.weighted_loss` makes the loss ``world * sum_i w_i l_i`` over
        this rank's samples with: its gradient with respect to them (``world * w_i``, in the dtype of
        ``local_losses``) and the samples it leaves out (``w_i <= 0``), both ``None`` when not ``active``; this rank's
        weights; and the global weights' statistics (:attr:`WeightStats.vector`).

    Example:
        >>> import torch
        >>> from reweigh.algorithms.step import weigh_global_batch
        >>> from reweigh.algorithms.strategies import get_strategy
        >>> losses = torch.tensor([1.0, 2.0, 3.0])
        >>> grad, drop, weights, stats = weigh_global_batch(
        ...     losses, torch.tensor([4.0, 4.0, 4.0]), losses, 1.0, start=0, strategy=get_strategy('linupper'), delta=1.0,
        ...     token_normalize=False, active=True, world=1)
        >>> [round(w, 3) for w in weights.tolist()], torch.equal(grad, weights), drop.tolist()
        ([0.155, 0.422, 0.422], True, [False, False, False])
    """
    valid = real_slots(tokens)
    weights = sample_weights(losses.float(), strategy, r, delta)
    if token_normalize:
        weights = token_normalize_weights(weights, torch.where(valid, tokens, 0.0))
    local = weights[start:start + local_losses.shape[0]]
    stats = weight_stats(weights, losses, valid).vector
    if not active:
        return None, None, local, stats
    return world * local.to(local_losses.dtype), local <= 0, local, stats


_FUSED_WEIGH = Fused(weigh_global_batch)
""":func:`weigh_global_batch` compiled (one per process: its graphs are kept by their settings and input layouts)."""
_TEMPERATURES: dict[torch.device, tuple[float, torch.Tensor]] = {}


def _temperature(r: float, device: torch.device) -> torch.Tensor:
    """``r`` as a 0-d tensor on ``device``, the compiled step's input: made there (a fill, not a copy from the host),
    and kept while ``r`` stays the same."""
    kept = _TEMPERATURES.get(device)
    if kept is None or kept[0] != r:
        kept = _TEMPERATURES[device] = (r, torch.full((), r, dtype=torch.float32, device=device))
    return kept[1]


def reweight_microbatch(
    losses: torch.Tensor,
    tokens: torch.Tensor,
    *,
    strategy: str,
    r: float,
    delta: float,
    active: bool,
    token_normalize: bool = DEFAULT_TOKEN_NORMALIZE,
    capacity: int | None = None,
    sample_id: torch.Tensor | None = None,
    domain: torch.Tensor | None = None,
    fused: bool = False,
    world: int | None = None,
) -> ReweightedMicrobatch:
    """Weigh one microbatch over all ranks: one all-gather, then the weights and the loss, with no host sync.

    The per-sample losses (and token counts) of every rank are gathered
    (:func:`~reweigh.algorithms.gather_global_batch`), weighted with ``strategy`` (``'uniform'`` while not
    ``active``) and, with ``token_normalize``, the token counts folded in (:func:`weigh_global_batch`). When
    ``active`` the loss is ``world_size * sum_i w_i l_i`` over this rank's samples, so that after data-parallel
    gradient averaging the update is ``sum_i w_i grad(l_i)`` over the global microbatch; the weights are constants
    in the backward (:func:`~reweigh.algorithms.losses.weighted_loss`).

    Args:
        losses (torch.Tensor): ``(n,)`` this rank's per-sample losses (with their graph when ``active``).
        tokens (torch.Tensor): ``(n,)`` their token counts.
        strategy (str): A registered strategy (see :func:`~reweigh.algorithms.compute_sample_weights`).
        r (float): Temperature in use (after any schedule: :func:`scheduled_r`).
        delta (float): Half-width of the loss normalisation interval.
        active (bool): Whether to replace the loss: after warm-up, for a strategy other than ``'uniform'``.
        token_normalize (bool): Fold token counts into the weights. Default: ``False``.
        capacity (int, optional): Slots per rank in the gather, ``>=`` every rank's ``n`` (the device
            microbatch size). Default: ``n``.
        sample_id (torch.Tensor, optional): ``(n,)`` the samples' ids, kept in the record for the history.
        domain (torch.Tensor, optional): ``(n,)`` their domains, kept in the record.
        fused (bool): Run :func:`weigh_global_batch` compiled, as one region (:mod:`reweigh.algorithms.fused`).
            Default: ``False`` (eager).
        world (int, optional): Data-parallel ranks, when the trainer knows them (it cannot change within a run).
            Default: asked of ``torch.distributed`` (:func:`~reweigh.algorithms.gather.world_size`).

    Returns:
        ReweightedMicrobatch: the loss (or ``None``), this rank's record and the weight statistics.

    Raises:
        ValueError: For an unknown strategy, or an ``r`` or ``delta`` that is not a finite number > 0.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.step import reweight_microbatch
        >>> losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> out = reweight_microbatch(losses, torch.tensor([4, 4, 4]), strategy='linupper', r=1.0, delta=1.0, active=True)
        >>> [round(w, 3) for w in out.record.weights.tolist()], round(out.loss.item(), 3)
        ([0.155, 0.422, 0.422], 2.267)
    """
    fn = validate_weight_args(strategy if active else 'uniform', r, delta)
    world = world_size() if world is None else world
    # .data: a gradient-free alias of the same storage, as detach() gives, without the autograd view bookkeeping
    # detach() does (14 us against 6 right after a forward pass); the step only reads it
    detached = losses.data
    batch = gather_global_batch(detached, tokens, capacity, world=world)
    weigh, temperature = (_FUSED_WEIGH, _temperature(r, losses.device)) if fused else (weigh_global_batch, r)
    grad, drop, local, stats = weigh(batch.losses, batch.tokens, detached, temperature, start=batch.local.start,
                                     strategy=fn, delta=delta, token_normalize=token_normalize, active=active, world=world)
    loss = weighted_loss(losses, grad, drop) if grad is not None and drop is not None else None
    record = MicrobatchWeights(detached if detached.dtype == torch.float32 else detached.float(), tokens, local, r, active,
                               sample_id, domain)
    return ReweightedMicrobatch(loss, record, WeightStats(stats))


class MetricValues(Mapping[str, torch.Tensor]):
    """Metric names and their values, kept as one device vector; each value reads as a 0-d tensor.

    A logger reads :attr:`vector` whole (one device-to-host copy); indexing by name is for tests and readers.
    """

    def __init__(self, names: tuple[str, ...], vector: torch.Tensor) -> None:
        self.names = names
        self.vector = vector
        """``(len(names),)`` the values, in the order of :attr:`names`."""

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        return self.vector[self.names.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


_METRIC_OF = {'entropy': 'weight_entropy', 'ess': 'ess', 'mean_loss': 'mean_loss', 'nonfinite': 'nonfinite_losses',
              'min': 'weight_min', 'max': 'weight_max'}
_METRIC_NAMES = tuple(f'{METRIC_PREFIX}/{_METRIC_OF[field]}' for field in STAT_FIELDS)
"""The metrics :meth:`WeightMetrics.report` makes of :attr:`WeightStats.vector`, in its order."""
_R_METRIC, _ACTIVE_METRIC = f'{METRIC_PREFIX}/r', f'{METRIC_PREFIX}/active'
"""The metrics :meth:`WeightMetrics.report` gives as Python floats."""
_FOLD_EVERY = 32
"""Microbatches whose statistics :class:`WeightMetrics` keeps apart before it folds them into one vector."""


class WeightMetrics:
    """The ``loss_reweighting/*`` metrics of the microbatches since the last :meth:`report`, kept on the device.

    ``weight_entropy``, ``ess`` and ``mean_loss`` are averaged over the microbatches, ``weight_min`` and
    ``weight_max`` are their extremes, ``nonfinite_losses`` their sum; ``r`` and ``active`` the mean temperature
    and share of reweighted microbatches (exactly the value when it did not change). Adding a microbatch dispatches
    nothing to the device, nor does a report of one microbatch; a report of several is a few operators. Memory stays
    bounded however rarely an adapter reports, and nothing waits for the device until the caller reads the tensors.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.step import WeightMetrics, reweight_microbatch
        >>> metrics = WeightMetrics()
        >>> for losses in ([1.0, 2.0], [1.0, 1.0]):
        ...     out = reweight_microbatch(torch.tensor(losses), torch.tensor([4, 4]), strategy='linupper', r=1.0,
        ...                               delta=1.0, active=True)
        ...     metrics.add(out.stats, out.record.r, out.record.active)
        >>> tensors, scalars = metrics.report()
        >>> round(float(tensors['loss_reweighting/weight_max']), 3), scalars
        (0.731, {'loss_reweighting/r': 1.0, 'loss_reweighting/active': 1.0})
        >>> metrics.report() is None
        True
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._vectors: list[torch.Tensor] = []  # WeightStats.vector of each microbatch (or a fold of several)
        self._count = 0
        self._r_sum = 0.0
        self._r_values: set[float] = set()
        self._active_count = 0

    def clear(self) -> None:
        """Drop the statistics added since the last :meth:`report` (nothing to do, the usual case, costs nothing)."""
        if self._count:
            self._reset()

    def add(self, stats: WeightStats, r: float, active: bool) -> None:
        """Add one microbatch's statistics."""
        self._vectors.append(stats.vector)
        if len(self._vectors) >= _FOLD_EVERY:
            self._vectors = [fold_stats(self._vectors)]
        self._count += 1
        self._r_sum += r
        if len(self._r_values) < 2:
            self._r_values.add(r)
        self._active_count += active

    def report(self) -> tuple[MetricValues, dict[str, float]] | None:
        """The metrics since the last report as 0-d device tensors (one vector, :class:`MetricValues`) and Python
        floats, and start anew.

        Returns ``None`` when no microbatch was added.
        """
        if not self._vectors:
            return None
        count = self._count
        values = fold_stats(self._vectors)
        if count > 1:  # one microbatch's statistics are its metrics as they are
            averaged = torch.arange(values.shape[0], device=values.device) < AVERAGED_STATS  # made there: no copy
            values = torch.where(averaged, values / count, values)
        r = next(iter(self._r_values)) if len(self._r_values) == 1 else self._r_sum / count
        scalars = {_R_METRIC: r, _ACTIVE_METRIC: self._active_count / count}
        self._reset()
        return MetricValues(_METRIC_NAMES, values), scalars


def fold_stats(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Statistics vectors (:attr:`WeightStats.vector`) of several microbatches as one: the summed fields added up,
    the minimum and maximum kept.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.step import fold_stats
        >>> fold_stats([torch.tensor([1.0, 1, 1, 1, 0.2, 0.5]), torch.tensor([2.0, 2, 2, 0, 0.1, 0.4])]).tolist()
        [3.0, 3.0, 3.0, 1.0, 0.10000000149011612, 0.5]
    """
    if len(vectors) == 1:
        return vectors[0]
    stacked = torch.stack(vectors)
    low, high = SUMMED_STATS, SUMMED_STATS + 1
    return torch.cat([stacked[:, :low].sum(0), stacked[:, low:high].amin(0), stacked[:, high:].amax(0)])
