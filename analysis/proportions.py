"""Domain mixing proportions from a reweighted run: instance-level weights turned into a domain-level mix.

After warm-up, a reweighted run gives each domain ``d`` a share ``s_d`` of the total weight while the domain
fills a share ``p_d`` of the rows (both over the reweighted steps of the loss history, see
:class:`~reweigh.analysis.Analysis`). Its mean weight per row relative to uniform is ``m_d = s_d / p_d``.
The proposed proportions are

    q_d ∝ p_d * m_d ** (1 / T)

then floored: every domain gets at least ``floor``, and the others share the rest in the same ratios.

* ``T = 1`` gives ``q_d = s_d``: the mix the reweighted run effectively trained on. Training uniformly on it
  gives each domain the share of the gradient LinUpper gave it, without reweighting.
* ``T > 1`` moves towards the mix as trained (``T -> inf`` gives ``q_d = p_d``, no change); ``T < 1``
  goes further in the direction the weights point.

This is the paper's combination of instance-level reweighting with domain-level mixing, with the run itself
in place of a proxy model. The floor keeps a domain the weights disfavour from vanishing from the next
run. The module imports neither torch nor Composer.

Example:
    >>> import pyarrow as pa
    >>> from reweigh.analysis.proportions import domain_proportions
    >>> summary = pa.table({'domain': [0, 1], 'weight_share': [0.6, 0.4], 'row_share': [0.5, 0.5]})
    >>> {d: round(q, 4) for d, q in domain_proportions(summary).items()}
    {0: 0.6, 1: 0.4}
    >>> {d: round(q, 4) for d, q in domain_proportions(summary, temperature=2.0).items()}
    {0: 0.5505, 1: 0.4495}
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

__all__ = ['domain_proportions', 'floored', 'mix_from_mean_weights']


def floored(shares: dict[int, float], floor: float) -> dict[int, float]:
    """Shares summing to 1 in which every entry is at least ``floor``, the others keeping their ratios.

    Raises:
        ValueError: If ``floor`` is negative or so large that the domains cannot all have it.

    Example:
        >>> from reweigh.analysis.proportions import floored
        >>> floored({0: 0.98, 1: 0.01, 2: 0.01}, 0.05)
        {0: 0.9, 1: 0.05, 2: 0.05}
    """
    if not 0 <= floor * len(shares) <= 1:
        raise ValueError(f'floor must be in [0, 1/{len(shares)}] for {len(shares)} domains, got {floor}')
    total = sum(shares.values())
    out = {d: s / total for d, s in shares.items()}
    pinned: set[int] = set()
    while True:  # pin the domains under the floor, rescale the rest; repeat until none falls under
        low = {d for d, s in out.items() if d not in pinned and s < floor}
        if not low:
            return {d: round(s, 12) for d, s in out.items()}
        pinned |= low
        free = sum(s for d, s in out.items() if d not in pinned)
        room = 1.0 - floor * len(pinned)
        out = {d: floor if d in pinned else s * room / free for d, s in out.items()}


def mix_from_mean_weights(base: np.ndarray, mean_weight: np.ndarray, temperature: float = 1.0,
                          floor: float = 0.0) -> np.ndarray:
    """``q_d ∝ b_d * m_d ** (1 / temperature)``, floored: the rule of :func:`domain_proportions` on arrays, with the
    mix ``b`` the weights were measured on and each domain's mean weight relative to uniform ``m``.

    Online mixing (:class:`reweigh.pipeline.mixing.WeightsPolicy`) and ``reweigh curate --proportions`` both use it.

    Raises:
        ValueError: For a ``temperature`` that is not a finite number > 0, or a bad ``floor``.

    Example:
        >>> import numpy as np
        >>> from reweigh.analysis.proportions import mix_from_mean_weights
        >>> mix_from_mean_weights(np.array([0.5, 0.5]), np.array([1.2, 0.8])).round(4).tolist()
        [0.6, 0.4]
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f'temperature must be a finite number > 0, got {temperature}')
    raw = np.asarray(base, dtype=np.float64) * np.asarray(mean_weight, dtype=np.float64) ** (1.0 / temperature)
    out = floored(dict(enumerate(raw.tolist())), floor)
    return np.array([out[d] for d in range(len(raw))])


def domain_proportions(summary: pa.Table, temperature: float = 1.0, floor: float = 0.0) -> dict[int, float]:
    """Proportions ``q_d ∝ p_d * (s_d / p_d) ** (1 / temperature)``, floored (see the module docstring).

    Args:
        summary: :attr:`Analysis.summary <reweigh.analysis.Analysis.summary>` of a reweighted run (the
            columns ``domain``, ``weight_share`` and ``row_share`` are used).
        temperature: ``T > 0``; 1 reproduces the run's weight shares, larger values stay closer to the
            mix as trained. Default: ``1.0``.
        floor: The least proportion of any domain, in ``[0, 1 / domains]``. Default: ``0.0``.

    Returns:
        dict[int, float]: Domain index to proportion, summing to 1.

    Raises:
        ValueError: If the run never reweighted (no weight shares), or for a bad ``temperature``/``floor``.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f'temperature must be a finite number > 0, got {temperature}')
    rows = [r for r in summary.select(['domain', 'weight_share', 'row_share']).to_pylist()
            if r['weight_share'] is not None and r['row_share']]
    if not rows:
        raise ValueError('the run never reweighted (no weight shares after warm-up): a uniform run, or one '
                         'that stopped during the warm-up, says nothing about the domains.')
    mix = mix_from_mean_weights(np.array([r['row_share'] for r in rows]),
                                np.array([r['weight_share'] / r['row_share'] for r in rows]), temperature, floor)
    return {r['domain']: float(q) for r, q in zip(rows, mix)}
