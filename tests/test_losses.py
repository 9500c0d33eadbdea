"""Per-sample losses and the reweighted loss."""

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reweigh.algorithms import compute_sample_weights, per_sample_loss, reweighted_loss


def _reference(logits, labels):
    """Per-sample loss the textbook way: shift the logits, mean over each row's targets."""
    out = []
    for row_logits, row_labels in zip(logits, labels):
        x, y = row_logits[:-1], row_labels[1:]
        keep = y != -100
        out.append(F.cross_entropy(x[keep], y[keep]) if keep.any() else torch.tensor(0.0))
    return torch.stack(out)


def test_per_sample_loss_matches_reference_with_ignored_tokens():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 13)
    labels = torch.randint(0, 13, (4, 9))
    labels[1, 5:] = -100
    labels[2, 0] = -100  # position 0 is never a target: no effect
    labels[3, 1:] = -100  # no target at all
    out = per_sample_loss(logits, labels)
    torch.testing.assert_close(out.loss, _reference(logits, labels))
    assert out.tokens.tolist() == [8, 4, 8, 0]
    assert out.loss.dtype == torch.float32 and out.tokens.dtype == torch.int64


def test_per_sample_loss_token_mean_equals_the_usual_batch_loss():
    torch.manual_seed(1)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, 4:] = -100
    out = per_sample_loss(logits, labels)
    usual = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    torch.testing.assert_close((out.loss * out.tokens).sum() / out.tokens.sum(), usual)


def test_per_sample_loss_backpropagates():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    per_sample_loss(logits, labels).loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


class _CopyWatcher(TorchDispatchMode):
    """Records every copy-like op whose output is as large as the logits."""

    COPIES = {'clone', 'copy_', '_to_copy', 'contiguous', 'slice_scatter', 'cat'}

    def __init__(self, numel):
        super().__init__()
        self.numel, self.copies = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split('.')[0]
        if name in self.COPIES and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.copies.append(name)
        return out


def test_per_sample_loss_makes_no_copy_of_the_logits():
    logits = torch.randn(4, 32, 50)
    labels = torch.randint(0, 50, (4, 32))
    with _CopyWatcher(logits.numel() - 4 * 50) as watcher:  # a shifted copy would be (4, 31, 50)
        per_sample_loss(logits, labels)
    assert watcher.copies == []


def test_per_sample_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r'got \(2, 5, 7\) and \(2, 4\)'):
        per_sample_loss(torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='Expected logits'):
        per_sample_loss(torch.randn(10, 7), torch.zeros(10, dtype=torch.long))


def test_reweighted_loss_with_uniform_weights_is_the_sample_mean():
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert float(reweighted_loss(losses, torch.full((3,), 1 / 3))) == pytest.approx(3.0)
    # two ranks, each with half of a global batch of 6: world_size * sum over own samples
    assert float(reweighted_loss(losses, torch.full((3,), 1 / 6), world_size=2)) == pytest.approx(3.0)


def test_reweighted_loss_isolates_nonfinite_samples_in_value_and_gradient():
    losses = torch.tensor([1.0, float('nan'), 3.0, float('inf')], requires_grad=True)
    weights = compute_sample_weights(losses, 'linupper')
    loss = reweighted_loss(losses, weights)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(losses.grad).all()
    torch.testing.assert_close(losses.grad, weights)


def test_reweighted_loss_stays_nonfinite_when_every_loss_is():
    losses = torch.tensor([float('nan'), float('inf')])
    assert not torch.isfinite(reweighted_loss(losses, compute_sample_weights(losses)))


def test_weights_are_constants_in_backward():
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    weights = compute_sample_weights(losses, 'linupper')
    reweighted_loss(losses, weights).backward()
    torch.testing.assert_close(losses.grad, weights)
