"""Per-sample weights from per-sample losses (method steps 3-5), as pure tensor functions.

Everything here is vectorised and free of host synchronisation, so it can run on every training
step on any device: no ``.item()``, no data-dependent Python branches, no boolean indexing.
"""

from __future__ import annotations

import math

import torch

from reweigh.algorithms.constants import DEFAULT_DELTA, DEFAULT_R, DEFAULT_STRATEGY
from reweigh.algorithms.strategies import Strategy, get_strategy

__all__ = [
    'AVERAGED_STATS',
    'STAT_FIELDS',
    'SUMMED_STATS',
    'WeightStats',
    'compute_sample_weights',
    'normalize_losses',
    'sample_weights',
    'token_normalize_weights',
    'validate_weight_args',
    'weight_stats',
]

_MIN_SPREAD = 1e-6


def validate_weight_args(strategy: str, r: float, delta: float) -> Strategy:
    """Check the arguments of :func:`compute_sample_weights` and return the strategy function.

    Raises:
        ValueError: For an unknown strategy (listing the known ones), or an ``r`` or ``delta`` that is
            not a finite number greater than 0.
    """
    fn = get_strategy(strategy)
    if type(r) is float and type(delta) is float and 0.0 < r < math.inf and 0.0 < delta < math.inf:
        return fn  # the usual case, what every step passes, in one test (NaN fails it)
    for name, value in (('r', r), ('delta', delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f'{name} must be a finite number > 0, got {value!r}.')
    return fn


def normalize_losses(losses: torch.Tensor, delta: float = DEFAULT_DELTA, finite: torch.Tensor | None = None) -> torch.Tensor:
    """Map losses affinely onto ``[-delta, delta]`` (method step 3).

    ``h_i = delta * (2 l_i - (l_max + l_min)) / max(l_max - l_min, 1e-6)``, with ``l_min`` and
    ``l_max`` taken over the finite losses only. Non-finite entries get ``h = 0``; if no loss is
    finite, every ``h`` is NaN. Equal losses give ``h = 0`` everywhere.

    Args:
        losses (torch.Tensor): 1-D float tensor of per-sample losses.
        delta (float): Half-width of the target interval. Default: ``1.0``.
        finite (torch.Tensor, optional): Precomputed ``torch.isfinite(losses)``.

    Returns:
        torch.Tensor: ``h``, same shape and dtype as ``losses``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import normalize_losses
        >>> normalize_losses(torch.tensor([1.0, 2.0, 3.0]))
        tensor([-1.,  0.,  1.])
    """
    if finite is None:
        finite = torch.isfinite(losses)
    # both extremes from one reduction (one scratch value instead of two in a compiled step: BENCHMARKS.md)
    extremes = torch.stack([torch.where(finite, losses, math.inf), torch.where(finite, -losses, math.inf)]).amin(1)
    l_min, l_max = extremes[0], -extremes[1]
    safe = torch.where(finite, losses, l_min)
    spread = torch.clamp(l_max - l_min, min=_MIN_SPREAD)
    return delta * (2 * safe - (l_max + l_min)) / spread


def compute_sample_weights(
    losses: torch.Tensor,
    strategy: str = DEFAULT_STRATEGY,
    r: float = DEFAULT_R,
    delta: float = DEFAULT_DELTA,
) -> torch.Tensor:
    """Turn per-sample losses into weights that sum to 1 (method steps 3-5).

    The losses are normalised onto ``[-delta, delta]``, shaped by ``strategy``, and passed through a
    softmax with temperature ``r``: ``w_i = exp((f_i - max f) / r) / sum_j exp((f_j - max f) / r)``.

    Non-finite losses (NaN or inf from a bad sample) get weight 0 and do not affect the others. If no
    loss is finite, the weights are uniform, so a weighted sum of the losses stays non-finite and the
    usual handling of a bad step applies.

    Args:
        losses (torch.Tensor): 1-D tensor of per-sample losses (any float dtype; detached here).
        strategy (str): A registered strategy: ``'uniform'``, ``'linupper'``, ``'quadratic'``,
            ``'extremes'``, ``'upper'`` or one added with :func:`register_strategy`.
            Default: ``'linupper'``.
        r (float): Softmax temperature (KL-regularisation strength), ``> 0``. Large ``r`` tends to
            uniform weights. Default: ``1.0``.
        delta (float): Half-width of the normalisation interval, ``> 0``. Default: ``1.0``.

    Returns:
        torch.Tensor: float32 weights on the device of ``losses``, same length, summing to 1.

    Raises:
        ValueError: For an unknown strategy, ``r <= 0``, ``delta <= 0``, or ``losses`` that is not a
            non-empty 1-D floating-point tensor.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import compute_sample_weights
        >>> w = compute_sample_weights(torch.tensor([0.5, 2.0, 3.5]), strategy='linupper', r=1.0)
        >>> [round(x, 4) for x in w.tolist()]
        [0.1554, 0.4223, 0.4223]
    """
    fn = validate_weight_args(strategy, r, delta)
    if not isinstance(losses, torch.Tensor) or losses.ndim != 1 or losses.numel() == 0:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f'losses must be a non-empty 1-D tensor, got {shape}.')
    if not losses.is_floating_point():
        raise ValueError(f'losses must be a floating-point tensor, got dtype {losses.dtype}.')

    with torch.no_grad():
        return sample_weights(losses.detach().float(), fn, r, delta)


def sample_weights(losses: torch.Tensor, fn: Strategy, r: float | torch.Tensor, delta: float) -> torch.Tensor:
    """:func:`compute_sample_weights` without the checks: float32 ``losses``, the strategy function itself, and ``r``
    as a number or a 0-d tensor (so a compiled caller does not recompile when a schedule changes it).

    Example:
        >>> import torch
        >>> from reweigh.algorithms.strategies import get_strategy
        >>> from reweigh.algorithms.weights import sample_weights
        >>> sample_weights(torch.tensor([1.0, float('nan')]), get_strategy('linupper'), torch.tensor(1.0), 1.0)
        tensor([1., 0.])
    """
    finite = torch.isfinite(losses)
    f = fn(normalize_losses(losses, delta, finite), delta).float()
    f = torch.where(finite, f, -math.inf)
    g = torch.exp((f - f.amax()) / r)
    g = torch.where(finite.any(), g, torch.ones_like(g))
    return g / g.sum()


def token_normalize_weights(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Fold token counts into weights: ``w_i n_i / sum_j w_j n_j``.

    With uniform weights this turns a sample-mean loss into the token-mean loss of ordinary
    language-model training (method step 6, last remark).

    Args:
        weights (torch.Tensor): 1-D weights summing to 1.
        tokens (torch.Tensor): 1-D count of loss-bearing tokens per sample.

    Returns:
        torch.Tensor: float32 weights summing to 1 (uniform if every count is 0).

    Example:
        >>> import torch
        >>> from reweigh.algorithms import token_normalize_weights
        >>> token_normalize_weights(torch.tensor([0.5, 0.5]), torch.tensor([1, 3]))
        tensor([0.2500, 0.7500])
    """
    scaled = weights.float() * tokens.float()
    total = scaled.sum()
    return torch.where(total > 0, scaled / total.clamp(min=torch.finfo(torch.float32).tiny), weights.float())


STAT_FIELDS = ('entropy', 'ess', 'mean_loss', 'nonfinite', 'min', 'max')
"""The layout of :attr:`WeightStats.vector`."""
SUMMED_STATS = 4
"""The first fields of :data:`STAT_FIELDS` add up over microbatches; the minimum and maximum follow."""
AVERAGED_STATS = 3
"""Of the summed fields, these first ones are reported as means over the microbatches."""


def _field(name: str, doc: str) -> property:
    index = STAT_FIELDS.index(name)
    return property(lambda self: self.vector[index], doc=doc)


class WeightStats:
    """Summary of one weight vector: six float32 values in one device tensor (no host sync), read as 0-d tensors.

    :attr:`vector` holds, in :data:`STAT_FIELDS` order, the values that add up over microbatches (the first
    :data:`AVERAGED_STATS` of them are averaged when reported), then the smallest and the largest weight.
    """

    __slots__ = ('vector',)

    def __init__(self, vector: torch.Tensor) -> None:
        self.vector = vector
        """``(6,)`` entropy, ESS, mean loss, non-finite count, the smallest weight, the largest weight."""

    entropy = _field('entropy', 'Shannon entropy of the weights, in nats (``log N`` when uniform).')
    ess = _field('ess', 'Effective sample size ``1 / sum w^2`` divided by the number of samples (1 when uniform).')
    mean_loss = _field('mean_loss', 'Plain (unweighted) mean of the finite losses: the loss uniform training would report.')
    nonfinite = _field('nonfinite', 'Number of samples whose loss was NaN or inf.')
    min = _field('min', 'Smallest weight among samples with a finite loss.')
    max = _field('max', 'Largest weight.')


def weight_stats(weights: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor | None = None) -> WeightStats:
    """Entropy, effective sample size, extremes and non-finite count of a weight vector, and the plain mean loss.

    Args:
        weights (torch.Tensor): 1-D weights summing to 1.
        losses (torch.Tensor): The losses they were computed from (to count non-finite ones).
        valid (torch.Tensor, optional): Boolean mask of real samples (``False`` for padding slots).

    Returns:
        WeightStats: 0-d float32 tensors on the weights' device.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import weight_stats
        >>> s = weight_stats(torch.full((4,), 0.25), torch.ones(4))
        >>> round(float(s.ess), 4), round(float(s.entropy), 4)
        (1.0, 1.3863)
    """
    w = weights.float()
    if valid is None:
        valid = torch.ones_like(w, dtype=torch.bool)
    finite = torch.isfinite(losses) & valid
    # the sums as one reduction over stacked rows, the extremes as another: a compiled step makes one scratch tensor
    # per reduction at every call (BENCHMARKS.md, "The fused step")
    count, w_log_w, w_squared, nonfinite, loss_sum, finite_count = torch.stack([
        valid.float(), torch.where(w > 0, w * torch.log(w), 0.0), w * w, (valid & ~finite).float(),
        torch.where(finite, losses.float(), 0.0), finite.float(),
    ]).sum(1)
    w_min, negated_max = torch.stack([torch.where(finite, w, math.inf), torch.where(valid, -w, math.inf)]).amin(1)
    return WeightStats(torch.stack([-w_log_w, 1.0 / w_squared / count, loss_sum / finite_count.clamp(min=1), nonfinite,
                                    w_min, -negated_max]))
