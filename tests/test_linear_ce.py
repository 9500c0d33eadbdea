"""The fused linear-cross-entropy head on its own (torch only): the chunked head's per-token losses and gradients
equal the materialised ones (exactly in float64), it honours bf16 autocast, the kernels fused on CUDA equal the
eager ones, and bad inputs fail clearly. tests/test_fused_loss.py tests it inside the Composer model."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from reweigh.models import linear_cross_entropy
from reweigh.models.linear_ce import resolve_loss_impl


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _head_grads(impl: str, chunk_size: int | None, bias: bool = True):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    b = torch.randn(101, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, 101, (37,), generator=g)
    targets[::5] = -100
    upstream = torch.rand(37, generator=g)  # a different gradient per token, as reweighting gives
    loss = linear_cross_entropy(hidden, weight, targets, b, impl=impl, chunk_size=chunk_size)
    inputs = (hidden, weight) + ((b,) if bias else ())
    return (loss, *torch.autograd.grad((loss * upstream).sum(), inputs))


@pytest.mark.parametrize('chunk_size', [1, 7, 36, 37, 1000, None])
def test_chunked_equals_materialized_values_and_gradients(chunk_size):
    reference = _head_grads('materialized', None)
    for got, want in zip(_head_grads('chunked', chunk_size), reference):
        assert _rel(got, want) < 1e-5
    assert bool((reference[0][::5] == 0).all())  # ignored targets: loss 0


def test_chunked_gradient_is_exact_in_float64():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, -100, 10, 5, 5, -100, 1, 2])
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, targets, b, impl='chunked', chunk_size=4), (hidden, weight, bias),
    )


def test_bf16_autocast_computes_the_head_in_bf16_and_the_losses_in_fp32():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(500, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 500, (64,), generator=g)
    reference = linear_cross_entropy(hidden, weight, targets, impl='materialized')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, impl='chunked', chunk_size=10)
        bf16 = linear_cross_entropy(hidden, weight, targets, impl='materialized')
    assert loss.dtype == torch.float32
    assert _rel(loss, bf16) < 1e-5  # the same bf16 logits as nn.Linear under autocast
    assert 1e-5 < _rel(loss, reference) < 1e-2  # not computed in fp32 (autocast is honoured), but close
    grad_h, grad_w = torch.autograd.grad(loss.sum(), (hidden, weight))
    assert grad_h.dtype == torch.float32 and grad_w.dtype == torch.float32


def test_bad_head_inputs_are_rejected():
    with pytest.raises(ValueError, match='Expected hidden'):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='chunk_size'):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match='loss_impl must be one of'):
        resolve_loss_impl('fused', torch.device('cpu'))
    with pytest.raises(ValueError, match='needs a CUDA device'):
        resolve_loss_impl('cce', torch.device('cpu'))


def test_the_fusable_kernels_used_on_cuda_equal_the_in_place_ones():
    from reweigh.models.linear_ce import (
        _grad_logits_eager,
        _grad_logits_fusable,
        _lse_and_loss_eager,
        _lse_and_loss_fusable,
    )

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 13, generator=g) * 30  # large logits: the max must be taken out before exp
    targets = torch.randint(0, 13, (6, 1), generator=g)
    scale = torch.rand(6, 1, generator=g)
    lse, loss = _lse_and_loss_eager(logits.clone(), targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets.squeeze(1), reduction='none'))
    for got, want in zip(_lse_and_loss_fusable(logits, targets), (lse, loss)):
        assert torch.allclose(got, want)
    fusable = _grad_logits_fusable(logits, lse, targets, scale)
    assert torch.allclose(fusable, _grad_logits_eager(logits.clone(), lse, targets, scale), atol=1e-7)
