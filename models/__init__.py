"""Composer models: a Hugging Face causal LM whose loss gives per-sample losses without the logits.

:class:`ReweighCausalLM` (built by :func:`build_causal_lm`) is the fast path of
:class:`~reweigh.algorithms.LossReweighting`; :func:`linear_cross_entropy` is its loss head as a function,
and :mod:`reweigh.models.metrics` holds Composer's language metrics fed by token losses.

Example:
    >>> from reweigh.models import build_causal_lm
    >>> model = build_causal_lm('gpt2', n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
    >>> model.fused
    True
"""

from reweigh.models.causal_lm import TOKEN_LOSS_KEY, ReweighCausalLM, build_causal_lm
from reweigh.models.linear_ce import LOSS_IMPLS, linear_cross_entropy
from reweigh.models.metrics import LanguageCrossEntropy, LanguagePerplexity

__all__ = [
    'LOSS_IMPLS',
    'TOKEN_LOSS_KEY',
    'LanguageCrossEntropy',
    'LanguagePerplexity',
    'ReweighCausalLM',
    'build_causal_lm',
    'linear_cross_entropy',
]
