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

from typing import NamedTuple

import torch

from reweigh.algorithms.constants import DEFAULT_TOKEN_NORMALIZE, METRIC_PREFIX
from reweigh.algorithms.gather import gather_global_batch, world_size
from reweigh.algorithms.losses import reweighted_loss
from reweigh.algorithms.weights import WeightStats, compute_sample_weights, token_normalize_weights, weight_stats

__all__ = [
    'MicrobatchWeights',
    'ReweightedMicrobatch',
    'WeightMetrics',
    'reweight_microbatch',
    'scheduled_r',
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
) -> ReweightedMicrobatch:
    """Weigh one microbatch over all ranks: one all-gather, then the weights and the loss, with no host sync.

    The per-sample losses (and token counts) of every rank are gathered
    (:func:`~reweigh.algorithms.gather_global_batch`), weighted with ``strategy`` (``'uniform'`` while not
    ``active``) and, with ``token_normalize``, the token counts folded in. When ``active`` the loss is
    ``world_size * sum_i w_i l_i`` over this rank's samples, so that after data-parallel gradient averaging the
    update is ``sum_i w_i grad(l_i)`` over the global microbatch; the weights are constants in the backward.

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

    Returns:
        ReweightedMicrobatch: the loss (or ``None``), this rank's record and the weight statistics.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.step import reweight_microbatch
        >>> losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> out = reweight_microbatch(losses, torch.tensor([4, 4, 4]), strategy='linupper', r=1.0, delta=1.0, active=True)
        >>> [round(w, 3) for w in out.record.weights.tolist()], round(out.loss.item(), 3)
        ([0.155, 0.422, 0.422], 2.267)
    """
    batch = gather_global_batch(losses, tokens, capacity)
    weights = compute_sample_weights(batch.losses, strategy if active else 'uniform', r, delta)
    if token_normalize:
        weights = token_normalize_weights(weights, batch.tokens)
    local = weights[batch.local]
    loss = reweighted_loss(losses, local, world_size()) if active else None
    record = MicrobatchWeights(losses.detach().float(), tokens, local, r, active, sample_id, domain)
    return ReweightedMicrobatch(loss, record, weight_stats(weights, batch.losses, batch.valid))


class WeightMetrics:
    """The ``loss_reweighting/*`` metrics of the microbatches since the last :meth:`report`, kept on the device.

    ``weight_entropy``, ``ess`` and ``mean_loss`` are averaged over the microbatches, ``weight_min`` and
    ``weight_max`` are their extremes, ``nonfinite_losses`` their sum; ``r`` and ``active`` the mean temperature
    and share of reweighted microbatches (exactly the value when it did not change). Memory stays bounded however
    rarely an adapter reports, and nothing waits for the device until the caller reads the tensors.

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
        self._sums: torch.Tensor | None = None  # entropy, ESS, mean loss, non-finite count
        self._extremes: torch.Tensor | None = None  # -(smallest weight), largest weight
        self._count = 0
        self._r_sum = 0.0
        self._r_values: set[float] = set()
        self._active_count = 0

    def add(self, stats: WeightStats, r: float, active: bool) -> None:
        """Add one microbatch's statistics."""
        sums = torch.stack([stats.entropy, stats.ess, stats.mean_loss, stats.nonfinite])
        extremes = torch.stack([-stats.min, stats.max])
        if self._sums is None or self._extremes is None:
            self._sums, self._extremes = sums, extremes
        else:
            self._sums, self._extremes = self._sums + sums, torch.maximum(self._extremes, extremes)
        self._count += 1
        self._r_sum += r
        if len(self._r_values) < 2:
            self._r_values.add(r)
        self._active_count += active

    def report(self) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
        """The metrics since the last report as 0-d device tensors and Python floats, and start anew.

        Returns ``None`` when no microbatch was added.
        """
        if self._sums is None or self._extremes is None:
            return None
        count = self._count
        entropy, ess, mean_loss, nonfinite = self._sums
        neg_min, max_ = self._extremes
        tensors = {
            'weight_entropy': entropy / count, 'ess': ess / count, 'weight_min': -neg_min, 'weight_max': max_,
            'nonfinite_losses': nonfinite, 'mean_loss': mean_loss / count,
        }
        r = next(iter(self._r_values)) if len(self._r_values) == 1 else self._r_sum / count
        scalars = {'r': r, 'active': self._active_count / count}
        self._reset()
        return ({f'{METRIC_PREFIX}/{k}': v for k, v in tensors.items()},
                {f'{METRIC_PREFIX}/{k}': v for k, v in scalars.items()})
