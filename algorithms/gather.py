"""All-gather of per-sample statistics so every rank weighs the same global (micro)batch."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = ['GlobalBatch', 'gather_global_batch', 'world_size']


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when it is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatch(NamedTuple):
    """Per-sample statistics of all ranks, laid out rank after rank in slots of equal size."""
    losses: torch.Tensor
    """``(world * capacity,)`` float32 detached losses; NaN in padding slots."""
    tokens: torch.Tensor
    """``(world * capacity,)`` float32 token counts; 0 in padding slots."""
    valid: torch.Tensor
    """``(world * capacity,)`` bool, ``False`` for padding slots."""
    local: slice
    """Where this rank's samples sit in the gathered vectors."""


def gather_global_batch(losses: torch.Tensor, tokens: torch.Tensor, capacity: int | None = None) -> GlobalBatch:
    """Gather detached per-sample losses and token counts from every rank in one collective.

    ``torch.distributed.all_gather`` needs equal shapes, so each rank pads its vectors to
    ``capacity`` slots (the device microbatch size, which no rank exceeds). Padding carries a NaN
    loss, which :func:`~reweigh.algorithms.compute_sample_weights` gives weight 0, and
    ``valid=False``. With a single process nothing is communicated or padded.

    Args:
        losses (torch.Tensor): ``(n,)`` this rank's per-sample losses.
        tokens (torch.Tensor): ``(n,)`` this rank's token counts.
        capacity (int, optional): Slots per rank, ``>= n`` on every rank. Default: ``n``.

    Returns:
        GlobalBatch: the concatenation over ranks and this rank's slice of it.

    Raises:
        ValueError: If ``capacity`` is smaller than the number of local samples.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import gather_global_batch
        >>> g = gather_global_batch(torch.tensor([1.0, 2.0]), torch.tensor([3, 4]))
        >>> g.losses.tolist(), g.local
        ([1.0, 2.0], slice(0, 2, None))
    """
    n = losses.shape[0]
    capacity = n if capacity is None else capacity
    if capacity < n:
        raise ValueError(f'capacity ({capacity}) is smaller than the number of local samples ({n}).')
    world = world_size()
    rank = dist.get_rank() if world > 1 else 0
    with torch.no_grad():
        packed = torch.empty(3, capacity, dtype=torch.float32, device=losses.device)
        packed[0, :n] = losses.detach()
        packed[0, n:] = math.nan
        packed[1, :n] = tokens
        packed[1, n:] = 0
        packed[2, :n] = 1
        packed[2, n:] = 0
        if world > 1:
            gathered = [torch.empty_like(packed) for _ in range(world)]
            dist.all_gather(gathered, packed)
            packed = torch.cat(gathered, dim=1)
    start = rank * capacity
    return GlobalBatch(packed[0], packed[1], packed[2] > 0, slice(start, start + n))
