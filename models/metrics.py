"""Composer's language-model metrics, also fed by per-token losses instead of logits.

With the fused loss (:class:`~reweigh.models.ReweighCausalLM` with ``loss_impl`` ``chunked`` or
``cce``) evaluation never builds the ``(batch, seq, vocab)`` logits: ``eval_forward`` returns the
``(batch, seq)`` token losses, and these metrics sum them. They keep Composer's class names, so logged
keys (``metrics/val/<domain>/LanguageCrossEntropy``) and ``Evaluator(metric_names=...)`` are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from composer.metrics import nlp

__all__ = ['LanguageCrossEntropy', 'LanguagePerplexity']


class LanguageCrossEntropy(nlp.LanguageCrossEntropy):
    """Token-mean cross-entropy from logits ``(batch, seq, vocab)`` or token losses ``(batch, seq)``.

    Token losses must be 0 where ``target`` is ``ignore_index`` (as
    :func:`~reweigh.models.linear_ce.linear_cross_entropy` returns them).

    Example:
        >>> import torch
        >>> from reweigh.models.metrics import LanguageCrossEntropy
        >>> metric = LanguageCrossEntropy()
        >>> metric.update(torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([[4, 5, -100]]))
        >>> metric.compute()
        tensor(2.)
    """

    def update(self, output: Mapping[str, Any] | torch.Tensor, target: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor) and output.shape == target.shape and output.is_floating_point():
            valid = target != self.ignore_index
            self.sum_loss += torch.where(valid, output.float(), 0.0).sum()
            self.total_items += valid.sum()
            return
        super().update(output, target)


class LanguagePerplexity(LanguageCrossEntropy):
    """``exp`` of :class:`LanguageCrossEntropy`; accepts the same inputs."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())
