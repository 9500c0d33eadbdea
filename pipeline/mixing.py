"""Online domain mixing policies: new domain proportions every few steps, from what training saw in a window.

A policy is a small object over ``D`` domains. Every ``interval`` steps :class:`~reweigh.pipeline.mixed_stream.MixingSampler`'s
owner (:class:`reweigh.callbacks.OnlineMixing` under Composer) hands it a :class:`DomainWindow`, the per-domain sums of
the rows, weights and losses of the steps since the last update over all ranks, with the proportions in use, and the
policy returns the next proportions. Policies are pure NumPy on ``(D,)`` vectors: no torch, no device.

Two are built in, and users add their own with :func:`register_policy`:

* ``weights`` (:class:`WeightsPolicy`), reweigh's own: the reweighting weights steer the stream. Over the window a
  domain ``d`` gets a share ``s_d`` of the weight while it fills a share ``p_d`` of the rows; its mean weight
  relative to uniform is ``m_d = s_d / p_d``. The target is the formula of ``reweigh curate --proportions``
  (:func:`reweigh.analysis.proportions.mix_from_mean_weights`) applied to the starting mix ``b``:
  ``q_d ∝ b_d * m_d ** (1 / temperature)``, floored, and the proportions move there by exponential smoothing,
  ``p <- smoothing * p + (1 - smoothing) * q``, so one noisy window cannot swing the mix. The target starts from
  ``b``, not from the mix in use: ``m_d`` measures how the weights judge a domain's rows, and multiplying it into
  the current mix at every update would compound it until every disfavoured domain sat at the floor. ``b`` is the
  stream's configured (or natural) mix, so the policy tilts the mix the user chose; with ``anchor='uniform'`` it is
  equal proportions, the mix ODM starts from whatever is configured.
* ``odm`` (:class:`ODMPolicy`), the baseline: Online Data Mixing (Albalak et al., 2023, "Efficient Online Data
  Mixing For Language Model Pre-Training", arXiv:2312.02406, Algorithm 1), an EXP3 bandit with the training loss
  as reward.

Example:
    >>> import numpy as np
    >>> from reweigh.pipeline.mixing import DomainWindow, make_policy
    >>> policy = make_policy('weights', np.array([0.5, 0.5]), temperature=1.0, floor=0.1, smoothing=0.0)
    >>> window = DomainWindow(rows=np.array([50., 50.]), weight=np.array([0.7, 0.3]), loss=np.array([300., 100.]))
    >>> policy.update(window, np.array([0.5, 0.5])).round(3).tolist()
    [0.7, 0.3]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np

from reweigh.analysis.proportions import mix_from_mean_weights

__all__ = [
    'ANCHORS',
    'DomainWindow',
    'MixingPolicy',
    'ODMPolicy',
    'WeightsPolicy',
    'available_policies',
    'make_policy',
    'register_policy',
]


ANCHORS = ('stream', 'uniform')
"""What :class:`WeightsPolicy`'s target may start from: the stream's starting mix, or equal proportions."""


class DomainWindow(NamedTuple):
    """What training saw of each domain since the last update, summed over all ranks (``(D,)`` float64 each); rows
    whose loss is not finite are left out of all three."""
    rows: np.ndarray
    """Rows (samples) trained on."""
    weight: np.ndarray
    """Their reweighting weights (each microbatch's weights sum to 1 over all ranks)."""
    loss: np.ndarray
    """Their per-sample losses."""


class MixingPolicy(Protocol):
    """A mixing policy: made as ``cls(base, **options)`` with ``base`` the starting proportions, then updated."""

    def initial(self) -> np.ndarray:
        """The proportions of the first steps, before any update."""

    def update(self, window: DomainWindow, current: np.ndarray) -> np.ndarray:
        """The next proportions (``(D,)``, non-negative, summing to 1) from the window and the proportions in use."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for :meth:`update` to continue as it would have (plain lists and numbers)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""


_REGISTRY: dict[str, Callable[..., MixingPolicy]] = {}


def register_policy(name: str, cls: Callable[..., MixingPolicy] | None = None, *, overwrite: bool = False):
    """Register a mixing policy class under ``name`` (usable as ``mixing.policy: name``); also a decorator.

    Args:
        name (str): The policy's name.
        cls (Callable, optional): A class (or factory) called as ``cls(base, **options)``; returns an object with
            :class:`MixingPolicy`'s methods.
        overwrite (bool): Replace a policy of that name. Default: ``False``.

    Raises:
        ValueError: If ``name`` is empty or taken and ``overwrite`` is ``False``.

    Example:
        >>> import numpy as np
        >>> from reweigh.pipeline.mixing import make_policy, register_policy
        >>> @register_policy('fixed', overwrite=True)
        ... class Fixed:
        ...     def __init__(self, base): self.base = base
        ...     def initial(self): return self.base
        ...     def update(self, window, current): return current
        ...     def state_dict(self): return {}
        ...     def load_state_dict(self, state): pass
        >>> make_policy('fixed', np.array([0.2, 0.8])).initial().tolist()
        [0.2, 0.8]
    """
    def _register(c: Callable[..., MixingPolicy]) -> Callable[..., MixingPolicy]:
        if not name:
            raise ValueError('a mixing policy needs a name')
        if name in _REGISTRY and not overwrite:
            raise ValueError(f'mixing policy {name!r} is already registered; pass overwrite=True to replace it.')
        _REGISTRY[name] = c
        return c

    return _register if cls is None else _register(cls)


def available_policies() -> tuple[str, ...]:
    """Names of the registered mixing policies, sorted."""
    return tuple(sorted(_REGISTRY))


def make_policy(name: str, base: np.ndarray, **options: Any) -> MixingPolicy:
    """The policy registered as ``name`` over starting proportions ``base``, with ``options``.

    Raises:
        ValueError: For an unknown name (the message lists the known ones), an option the policy does not take, or
            a bad option value.
    """
    if name not in _REGISTRY:
        raise ValueError(f'unknown mixing policy {name!r}; known: {", ".join(available_policies())}')
    cls = _REGISTRY[name]
    try:
        inspect.signature(cls).bind(base, **options)
    except TypeError as e:
        raise ValueError(f'mixing policy {name!r}: {e}') from None
    return cls(np.asarray(base, dtype=np.float64) / float(np.sum(base)), **options)


@register_policy('weights')
class WeightsPolicy:
    """reweigh's policy: the domains' mean reweighting weights steer the mix (see the module docstring).

    Args:
        base (np.ndarray): The starting proportions ``b`` (the configured or natural mix).
        temperature (float): ``T > 0`` of :func:`~reweigh.analysis.proportions.mix_from_mean_weights`; 1 gives the
            weight shares, smaller goes further. Default: ``1.0``.
        floor (float): The least proportion of any domain, in ``[0, 1 / D]``. Default: ``0.05``.
        smoothing (float): In ``[0, 1)``: how much of the mix in use each update keeps. Default: ``0.5``.
        anchor (str): The ``b`` the target starts from: ``'stream'``, the starting proportions ``base`` (the policy
            tilts the mix the user configured), or ``'uniform'``, equal proportions (the mix ODM starts from,
            whatever is configured; the stream starts there too). Default: ``'stream'``.

    Raises:
        ValueError: For a bad ``temperature``, ``floor``, ``smoothing`` or ``anchor``.

    Example:
        >>> import numpy as np
        >>> WeightsPolicy(np.array([0.7, 0.3]), anchor='uniform').initial().tolist()
        [0.5, 0.5]
    """

    def __init__(self, base: np.ndarray, temperature: float = 1.0, floor: float = 0.05, smoothing: float = 0.5,
                 anchor: str = 'stream') -> None:
        if not 0 <= smoothing < 1:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {', '.join(map(repr, ANCHORS))}, got {anchor!r}")
        base = np.asarray(base, dtype=np.float64)
        self.base = base if anchor == 'stream' else np.full(len(base), 1.0 / len(base))
        self.temperature, self.floor, self.smoothing = float(temperature), float(floor), float(smoothing)
        self.mean_weight = np.ones(len(base))
        """Each domain's latest mean weight relative to uniform (1 until a window has its rows)."""
        self._initial = self._target(self.mean_weight)  # the base, floored (so temperature and floor are checked now)

    def _target(self, mean_weight: np.ndarray) -> np.ndarray:
        return mix_from_mean_weights(self.base, mean_weight, self.temperature, self.floor)

    def initial(self) -> np.ndarray:
        return self._initial

    def update(self, window: DomainWindow, current: np.ndarray) -> np.ndarray:
        seen = window.rows > 0
        if seen.any() and window.weight[seen].sum() > 0:
            rows_share = window.rows / window.rows.sum()
            weight_share = window.weight / window.weight.sum()
            self.mean_weight = np.where(seen, weight_share / np.where(seen, rows_share, 1.0), self.mean_weight)
        return self.smoothing * np.asarray(current, dtype=np.float64) + (1 - self.smoothing) * self._target(self.mean_weight)

    def state_dict(self) -> dict[str, Any]:
        return {'mean_weight': self.mean_weight.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_weight = np.asarray(state['mean_weight'], dtype=np.float64)


@register_policy('odm')
class ODMPolicy:
    """Online Data Mixing (ODM; Albalak et al., 2023, arXiv:2312.02406, Algorithm 1): EXP3 over the domains.

    With ``K`` domains and update number ``t = 1, 2, ...``:

        eps_t = min(1 / K, sqrt(ln K / (K t)))
        pi_t(i) = (1 - K eps_t) * exp(eps_{t-1} R_i) / sum_j exp(eps_{t-1} R_j) + eps_t
        R_i <- alpha * R_i + (1 - alpha) * L_i / pi(i)

    where ``R`` starts at 0 (so the first proportions are uniform, whatever the starting mix), ``L_i`` is the
    domain's training loss and ``pi(i)`` its proportion when the loss was measured. The paper draws each batch from
    one domain and updates the drawn arm after every step; here batches mix domains, so every ``interval`` steps
    each domain with rows in the window is updated with its mean per-sample loss over the window (the importance
    weight ``1 / pi(i)`` kept as the paper has it). The paper's smoothing is ``alpha = 0.9``.

    Args:
        base (np.ndarray): The starting proportions (only their number is used: ODM starts uniform).
        alpha (float): The reward's smoothing, in ``[0, 1)``. Default: ``0.9``.

    Raises:
        ValueError: For ``alpha`` outside ``[0, 1)``.
    """

    def __init__(self, base: np.ndarray, alpha: float = 0.9) -> None:
        if not 0 <= alpha < 1:
            raise ValueError(f'alpha must be in [0, 1), got {alpha}')
        self.k, self.alpha = len(base), float(alpha)
        self.reward = np.zeros(self.k)
        self.t = 0
        """Updates made."""

    def _epsilon(self, t: int) -> float:
        return 1.0 / self.k if t == 0 else min(1.0 / self.k, math.sqrt(math.log(self.k) / (self.k * t)))

    def initial(self) -> np.ndarray:
        return np.full(self.k, 1.0 / self.k)

    def update(self, window: DomainWindow, current: np.ndarray) -> np.ndarray:
        seen = window.rows > 0
        mean_loss = np.divide(window.loss, window.rows, out=np.zeros(self.k), where=seen)
        current = np.asarray(current, dtype=np.float64)
        estimate = np.divide(mean_loss, current, out=np.zeros(self.k), where=current > 0)
        self.reward = np.where(seen, self.alpha * self.reward + (1 - self.alpha) * estimate, self.reward)
        previous, self.t = self._epsilon(self.t), self.t + 1
        eps = self._epsilon(self.t)
        logits = previous * self.reward
        soft = np.exp(logits - logits.max())
        return (1 - self.k * eps) * soft / soft.sum() + eps

    def state_dict(self) -> dict[str, Any]:
        return {'reward': self.reward.tolist(), 't': self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward, self.t = np.asarray(state['reward'], dtype=np.float64), int(state['t'])

