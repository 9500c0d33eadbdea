"""Loss-based sample reweighting: a pure tensor core, the framework-free step, and a thin Composer adapter.

The core (:func:`compute_sample_weights`, :func:`per_sample_loss`, :func:`reweighted_loss`) takes tensors and
returns tensors; :func:`reweight_microbatch` is the whole step of one microbatch (global gather, weights, loss,
statistics), and :class:`Reweighter` the object every trainer adapter holds: the method's settings, warm-up and
temperature schedule, that step, the metrics and the checkpointed state. They need torch only:
``import reweigh.algorithms`` works without Composer, Streaming or transformers. :class:`LossReweighting` drives a
:class:`Reweighter` from a Composer ``Trainer`` and is imported (with Composer) when first used. The model whose
loss exposes per-sample losses (the fast path) is :class:`reweigh.models.ReweighCausalLM`; the loss history is
:mod:`reweigh.history` (recorded in Composer by :class:`reweigh.callbacks.LossHistory`).

Example:
    >>> import torch
    >>> from reweigh.algorithms import compute_sample_weights
    >>> compute_sample_weights(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'GlobalBatch': 'gather', 'gather_global_batch': 'gather',
    'PER_SAMPLE_LOSS_KEY': 'losses', 'PerSampleLoss': 'losses', 'per_sample_loss': 'losses', 'per_sample_loss_from': 'losses',
    'per_sample_mean': 'losses',
    'reweighted_loss': 'losses', 'shift_labels': 'losses',
    'MicrobatchWeights': 'step', 'ReweightedMicrobatch': 'step', 'WeightMetrics': 'step', 'reweight_microbatch': 'step',
    'Progress': 'reweighter', 'Reweighter': 'reweighter', 'parse_warmup_string': 'reweighter',
    'available_strategies': 'strategies', 'get_strategy': 'strategies', 'register_strategy': 'strategies',
    'WeightStats': 'weights', 'compute_sample_weights': 'weights', 'normalize_losses': 'weights',
    'token_normalize_weights': 'weights', 'weight_stats': 'weights',
    'LossReweighting': 'loss_reweighting', 'parse_warmup': 'loss_reweighting',  # the Composer adapter
}
"""Each public name and the submodule that defines it, imported on first use: the package itself imports nothing,
so ``reweigh.algorithms.constants`` is free of torch and the core (every module but ``loss_reweighting``,
``times`` and ``deferred_metrics``) needs torch only."""

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
