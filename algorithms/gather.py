"""All-gather of per-sample statistics so every rank weighs the same global (micro)batch."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F

__all__ = ['GlobalBatch', 'gather_global_batch', 'real_slots', 'world_size']


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when it is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatch(NamedTuple):
    """Per-sample statistics of all ranks, laid out rank after rank in slots of equal size."""
    losses: torch.Tensor
    """``(world * capacity,)`` detached losses (float32 after a gather or padding); NaN in padding slots."""
    tokens: torch.Tensor
    """``(world * capacity,)`` token counts (float32 after a gather or padding); NaN in padding slots."""
    local: slice
    """Where this rank's samples sit in the gathered vectors."""

    @property
    def valid(self) -> torch.Tensor:
        """``(world * capacity,)`` bool, ``False`` for padding slots (:func:`real_slots`)."""
        return real_slots(self.tokens)


def real_slots(tokens: torch.Tensor) -> torch.Tensor:
    """Which slots of gathered token counts hold a sample: padding carries a NaN count (an integer tensor has none).

    Example:
        >>> import torch
        >>> from reweigh.algorithms.gather import real_slots
        >>> real_slots(torch.tensor([3.0, float('nan')])).tolist()
        [True, False]
    """
    return ~torch.isnan(tokens)


def gather_global_batch(losses: torch.Tensor, tokens: torch.Tensor, capacity: int | None = None, *,
                        world: int | None = None) -> GlobalBatch:
    """Gather detached per-sample losses and token counts from every rank in one collective.

    ``torch.distributed.all_gather_into_tensor`` needs equal shapes, so each rank pads its samples to
    ``capacity`` slots (the device microbatch size, which no rank exceeds). A padding slot carries a NaN loss,
    which :func:`~reweigh.algorithms.compute_sample_weights` gives weight 0, and a NaN token count, which
    marks it as padding. With a single process and no padding nothing is communicated, copied or converted.

    Args:
        losses (torch.Tensor): ``(n,)`` this rank's per-sample losses.
        tokens (torch.Tensor): ``(n,)`` this rank's token counts.
        capacity (int, optional): Slots per rank, ``>= n`` on every rank. Default: ``n``.
        world (int, optional): :func:`world_size`, when the caller has it already. Default: asked for.

    Returns:
        GlobalBatch: the concatenation over ranks and this rank's slice of it.

    Raises:
        ValueError: If ``capacity`` is smaller than the number of local samples.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import gather_global_batch
        >>> g = gather_global_batch(torch.tensor([1.0, 2.0]), torch.tensor([3, 4]), capacity=3)
        >>> g.losses.tolist(), g.tokens.tolist(), g.local
        ([1.0, 2.0, nan], [3.0, 4.0, nan], slice(0, 2, None))
    """
    n = losses.shape[0]
    capacity = n if capacity is None else capacity
    if capacity < n:
        raise ValueError(f'capacity ({capacity}) is smaller than the number of local samples ({n}).')
    world = world_size() if world is None else world
    rank = dist.get_rank() if world > 1 else 0
    local = slice(rank * capacity, rank * capacity + n)
    if world == 1 and capacity == n:  # nothing to send or pad: the vectors as they are
        return GlobalBatch(losses.detach() if losses.requires_grad else losses, tokens, local)
    with torch.no_grad():
        packed = torch.stack([losses.detach().float(), tokens.float()], dim=1)  # (n, 2): one row per sample
        if capacity > n:
            packed = F.pad(packed, (0, 0, 0, capacity - n), value=math.nan)
        if world > 1:
            gathered = packed.new_empty(world * capacity, 2)
            dist.all_gather_into_tensor(gathered, packed)
            packed = gathered
    return GlobalBatch(packed[:, 0], packed[:, 1], local)
