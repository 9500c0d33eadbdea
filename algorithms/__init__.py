"""Loss-based sample reweighting for Composer: a pure tensor core and a thin Composer adapter.

The core (:func:`compute_sample_weights`, :func:`per_sample_loss`, :func:`reweighted_loss`) takes
tensors and returns tensors; :class:`LossReweighting` wires it into a Composer ``Trainer``. The model
whose loss exposes per-sample losses (the fast path) is :class:`reweigh.models.ReweighCausalLM`; the loss
history recorder is :class:`reweigh.callbacks.LossHistory`.

Example:
    >>> import torch
    >>> from reweigh.algorithms import compute_sample_weights
    >>> compute_sample_weights(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
"""

from reweigh.algorithms.gather import GlobalBatch, gather_global_batch
from reweigh.algorithms.loss_reweighting import LossReweighting, MicrobatchWeights, parse_warmup
from reweigh.algorithms.losses import (
    PER_SAMPLE_LOSS_KEY,
    PerSampleLoss,
    per_sample_loss,
    per_sample_mean,
    reweighted_loss,
    shift_labels,
)
from reweigh.algorithms.strategies import available_strategies, get_strategy, register_strategy
from reweigh.algorithms.weights import (
    WeightStats,
    compute_sample_weights,
    normalize_losses,
    token_normalize_weights,
    weight_stats,
)

__all__ = [
    'PER_SAMPLE_LOSS_KEY',
    'GlobalBatch',
    'LossReweighting',
    'MicrobatchWeights',
    'PerSampleLoss',
    'WeightStats',
    'available_strategies',
    'compute_sample_weights',
    'gather_global_batch',
    'get_strategy',
    'normalize_losses',
    'parse_warmup',
    'per_sample_loss',
    'per_sample_mean',
    'register_strategy',
    'reweighted_loss',
    'shift_labels',
    'token_normalize_weights',
    'weight_stats',
]
