"""The fused per-sample loss and the Composer causal LM built on it.

:func:`linear_cross_entropy` (torch only) is the loss head as a function: per-token losses from the hidden states
and the head's weight, without the logits. :class:`ReweighCausalLM` (built by :func:`build_causal_lm`, with
Composer and transformers) is a Hugging Face causal LM whose loss gives per-sample losses through it, the fast path
of :class:`~reweigh.algorithms.LossReweighting`; :mod:`reweigh.models.metrics` holds Composer's language metrics fed
by token losses. Each name is imported on first use, so the head needs neither Composer nor transformers.

Example:
    >>> import torch
    >>> from reweigh.models import linear_cross_entropy
    >>> hidden, weight = torch.randn(4, 8), torch.randn(50, 8)
    >>> linear_cross_entropy(hidden, weight, torch.tensor([1, 2, -100, 3])).shape
    torch.Size([4])
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'LOSS_IMPLS': 'linear_ce', 'linear_cross_entropy': 'linear_ce',
    'TOKEN_LOSS_KEY': 'causal_lm', 'ReweighCausalLM': 'causal_lm', 'build_causal_lm': 'causal_lm',
    'LanguageCrossEntropy': 'metrics', 'LanguagePerplexity': 'metrics',
}
"""Each public name and the submodule that defines it (``linear_ce`` needs torch only; the others Composer)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
