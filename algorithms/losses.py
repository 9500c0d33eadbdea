"""Per-sample causal-LM losses and the reweighted loss (method steps 1 and 6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

__all__ = [
    'PER_SAMPLE_LOSS_KEY', 'PerSampleLoss', 'per_sample_loss', 'per_sample_loss_from', 'per_sample_mean', 'reweighted_loss',
    'shift_labels', 'weighted_loss',
]

PER_SAMPLE_LOSS_KEY = 'per_sample_loss'
"""Key under which a model's outputs carry a :class:`PerSampleLoss` for :class:`~reweigh.algorithms.LossReweighting`.

Any ComposerModel can opt into the fast path by storing ``outputs[PER_SAMPLE_LOSS_KEY]`` (a mapping
output such as a dict or a Hugging Face ``ModelOutput``) in its ``loss()``.
"""


class PerSampleLoss(NamedTuple):
    """Per-sample mean token loss and the number of tokens it averages over."""
    loss: torch.Tensor
    """``(batch,)`` float32 mean next-token cross-entropy per sample; carries the autograd graph."""
    tokens: torch.Tensor
    """``(batch,)`` int64 count of non-ignored target tokens per sample."""


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> PerSampleLoss:
    """Mean next-token cross-entropy of each sample, in one pass over the logits.

    Labels follow the Hugging Face convention (``labels`` aligned with ``input_ids``; the model
    predicts position ``t + 1`` from position ``t``). The labels are shifted, not the logits, so no
    copy of the ``(batch, seq, vocab)`` logits is made; the last position predicts nothing. A sample
    with no target tokens has loss 0 and token count 0.

    Args:
        logits (torch.Tensor): ``(batch, seq, vocab)`` logits.
        labels (torch.Tensor): ``(batch, seq)`` integer labels; ``ignore_index`` marks positions
            without a target.
        ignore_index (int): Label value that contributes no loss. Default: ``-100``.

    Returns:
        PerSampleLoss: ``loss`` (float32, differentiable) and ``tokens`` (int64), each ``(batch,)``.

    Raises:
        ValueError: If the shapes do not match.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import per_sample_loss
        >>> logits = torch.zeros(2, 4, 10)                 # uniform predictions over 10 tokens
        >>> labels = torch.tensor([[1, 2, 3, 4], [1, 2, -100, -100]])
        >>> out = per_sample_loss(logits, labels)
        >>> [round(x, 4) for x in out.loss.tolist()], out.tokens.tolist()
        ([2.3026, 2.3026], [3, 1])
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f'Expected logits (batch, seq, vocab) and labels (batch, seq), got {tuple(logits.shape)} '
            f'and {tuple(labels.shape)}.',
        )
    targets = shift_labels(labels, ignore_index)
    token_loss = F.cross_entropy(
        logits.flatten(0, 1),
        targets.flatten(),
        ignore_index=ignore_index,
        reduction='none',
    ).view_as(targets)
    return per_sample_mean(token_loss, targets, ignore_index)


def per_sample_loss_from(outputs: Any, batch: Any) -> tuple[PerSampleLoss, bool]:
    """A training step's per-sample losses: the model's own (``outputs[PER_SAMPLE_LOSS_KEY]``, the fast path), or
    computed from its logits (``outputs['logits']`` or ``outputs`` itself) and ``batch['labels']``.

    Returns:
        tuple: the losses, and whether they were the model's own (``False``: one extra cross-entropy pass).

    Raises:
        ValueError: If there are neither per-sample losses nor logits and labels.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.losses import per_sample_loss_from
        >>> losses, fused = per_sample_loss_from(torch.zeros(2, 3, 5), {'labels': torch.tensor([[1, 2, 3], [1, 2, 3]])})
        >>> [round(v, 4) for v in losses.loss.tolist()], fused
        ([1.6094, 1.6094], False)
    """
    if isinstance(outputs, Mapping) and PER_SAMPLE_LOSS_KEY in outputs:
        return outputs[PER_SAMPLE_LOSS_KEY], True
    logits = outputs.get('logits') if isinstance(outputs, Mapping) else outputs
    if not isinstance(logits, torch.Tensor) or not isinstance(batch, Mapping) or 'labels' not in batch:
        raise ValueError(
            'reweighting needs per-sample losses: either outputs["per_sample_loss"] from the model, '
            'or logits (outputs["logits"] or a tensor) together with batch["labels"].',
        )
    return per_sample_loss(logits, batch['labels']), False


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token targets for Hugging Face style ``labels``: ``targets[:, t] = labels[:, t + 1]``.

    The last position predicts nothing and gets ``ignore_index``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import shift_labels
        >>> shift_labels(torch.tensor([[5, 6, 7]]))
        tensor([[   6,    7, -100]])
    """
    targets = torch.full_like(labels, ignore_index)
    targets[:, :-1] = labels[:, 1:]
    return targets


def per_sample_mean(token_loss: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> PerSampleLoss:
    """Mean of each row's token losses over its non-ignored targets (0 for a row without any).

    Args:
        token_loss (torch.Tensor): ``(batch, seq)`` per-token losses, 0 where the target is ignored.
        targets (torch.Tensor): ``(batch, seq)`` shifted targets (see :func:`shift_labels`).
        ignore_index (int): Target value without a loss. Default: ``-100``.

    Returns:
        PerSampleLoss: ``loss`` (float32, differentiable) and ``tokens`` (int64), each ``(batch,)``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import per_sample_mean
        >>> per_sample_mean(torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[4, 5], [4, -100]])).loss
        tensor([2., 2.])
    """
    tokens = (targets != ignore_index).sum(dim=1)
    loss = token_loss.float().sum(dim=1) / tokens.clamp(min=1)
    return PerSampleLoss(loss, tokens)


def reweighted_loss(losses: torch.Tensor, weights: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """The loss one rank backpropagates: ``world_size * sum_i w_i l_i`` over its own samples.

    After data-parallel gradient averaging over ``world_size`` ranks this gives the update
    ``sum_i w_i grad(l_i)`` over the global batch; with weights ``1/N`` it is the sample-mean loss.
    Samples with weight 0 (non-finite losses) contribute neither value nor NaN gradients
    (:func:`weighted_loss`).

    Args:
        losses (torch.Tensor): ``(n,)`` per-sample losses of this rank, with autograd graph.
        weights (torch.Tensor): ``(n,)`` this rank's slice of the global weights (no gradient).
        world_size (int): Number of data-parallel ranks. Default: ``1``.

    Returns:
        torch.Tensor: 0-d loss in the dtype of ``losses``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import reweighted_loss
        >>> reweighted_loss(torch.tensor([1.0, float('nan')]), torch.tensor([1.0, 0.0]))
        tensor(1.)
    """
    weights = weights.detach()
    return weighted_loss(losses, world_size * weights.to(losses.dtype), weights <= 0)


def weighted_loss(losses: torch.Tensor, grad: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``sum_i grad_i l_i`` over the samples not in ``drop``: a masked fill and a dot product, whose backward gives
    ``l_i`` the gradient ``grad_i`` (0 for a dropped sample, whatever its loss).

    What :func:`reweighted_loss` computes from ``grad = world_size * w`` and ``drop = w <= 0``; the reweighting step
    (:func:`~reweigh.algorithms.step.weigh_global_batch`) hands it those two vectors ready made. Every loss is kept
    when no weight is 0, so a step whose losses are all non-finite stays non-finite.

    Args:
        losses (torch.Tensor): ``(n,)`` per-sample losses, with autograd graph.
        grad (torch.Tensor): ``(n,)`` the loss's gradient with respect to them, in their dtype (no gradient).
        drop (torch.Tensor): ``(n,)`` bool, the samples to leave out.

    Returns:
        torch.Tensor: 0-d loss.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.losses import weighted_loss
        >>> losses = torch.tensor([1.0, 3.0, float('inf')], requires_grad=True)
        >>> loss = weighted_loss(losses, torch.tensor([0.25, 0.75, 0.0]), torch.tensor([False, False, True]))
        >>> loss.backward()
        >>> loss.item(), losses.grad.tolist()
        (2.5, [0.25, 0.75, 0.0])
    """
    return torch.dot(losses.masked_fill(drop, 0.0), grad)
