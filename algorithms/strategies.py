"""Weighting strategies: how normalised losses are shaped before the softmax.

A strategy is a function ``f(h, delta) -> Tensor`` applied elementwise to the normalised losses
``h`` in ``[-delta, delta]`` (method step 4). Larger ``f`` means more weight after the tempered
softmax of step 5. Strategies are looked up by name in a registry so configs can name them and
users can add their own with :func:`register_strategy`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ['Strategy', 'available_strategies', 'get_strategy', 'register_strategy']

Strategy = Callable[[torch.Tensor, float], torch.Tensor]

_REGISTRY: dict[str, Strategy] = {}


def register_strategy(name: str, fn: Strategy | None = None, *, overwrite: bool = False):
    """Register a weighting strategy under ``name``.

    Usable as a decorator or as a plain call. The function receives the normalised losses ``h``
    (float32, in ``[-delta, delta]``) and ``delta`` and returns a tensor of the same shape; it must be
    vectorised and must not synchronise with the host.

    Args:
        name (str): Name used in :func:`~reweigh.algorithms.compute_sample_weights` and in configs.
        fn (Strategy, optional): The strategy. If omitted, a decorator is returned.
        overwrite (bool): Replace an existing strategy of the same name. Default: ``False``.

    Returns:
        The registered function (or a decorator that registers it).

    Raises:
        ValueError: If ``name`` is empty or already registered and ``overwrite`` is ``False``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import register_strategy, compute_sample_weights
        >>> @register_strategy('lower_only', overwrite=True)
        ... def lower_only(h, delta):
        ...     return -h
        >>> w = compute_sample_weights(torch.tensor([1.0, 2.0]), strategy='lower_only')
        >>> bool(w[0] > w[1])
        True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'Strategy name must be a non-empty string, got {name!r}.')

    def _register(f: Strategy) -> Strategy:
        if not callable(f):
            raise ValueError(f'Strategy {name!r} must be callable, got {type(f).__name__}.')
        if name in _REGISTRY and not overwrite:
            raise ValueError(f'Strategy {name!r} is already registered; pass overwrite=True to replace it.')
        _REGISTRY[name] = f
        return f

    return _register if fn is None else _register(fn)


def get_strategy(name: str) -> Strategy:
    """Return the strategy registered under ``name``.

    Raises:
        ValueError: If no strategy of that name exists; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f'Unknown strategy {name!r}; available strategies: {", ".join(available_strategies())}.',
        ) from None


def available_strategies() -> tuple[str, ...]:
    """Names of all registered strategies, sorted."""
    return tuple(sorted(_REGISTRY))


@register_strategy('uniform')
def _uniform(h: torch.Tensor, delta: float) -> torch.Tensor:
    """No reweighting: every sample gets the same score, hence weight ``1/N``."""
    return torch.zeros_like(h)


@register_strategy('linupper')
def _linupper(h: torch.Tensor, delta: float) -> torch.Tensor:
    """``min(h + delta, delta)``: grows with the loss up to the middle of the range, then flat."""
    return torch.clamp(h + delta, max=delta)


@register_strategy('quadratic')
def _quadratic(h: torch.Tensor, delta: float) -> torch.Tensor:
    """``1 - h^2 / delta^2``: favours mid-loss samples."""
    return 1.0 - (h / delta)**2


@register_strategy('extremes')
def _extremes(h: torch.Tensor, delta: float) -> torch.Tensor:
    """``|h|``: favours both the lowest and the highest losses."""
    return h.abs()


@register_strategy('upper')
def _upper(h: torch.Tensor, delta: float) -> torch.Tensor:
    """``0.5 * h + 0.5 * delta``: weight grows linearly with the loss, without a cap."""
    return 0.5 * h + 0.5 * delta
