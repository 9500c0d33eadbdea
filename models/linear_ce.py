"""Per-token cross-entropy of a linear head without materialising the ``(tokens, vocab)`` logits.

The language-model head ``logits = hidden @ weight.T (+ bias)`` is by far the largest activation of a
modern LLM (vocabulary 128,256 at sequence 2048 and batch 8 is 8 GiB of fp32 logits). The functions here
compute the per-token loss chunk by chunk: forward keeps one chunk of logits at a time and saves only the
log-sum-exp per token; backward recomputes each chunk's logits and turns them into gradients at once.
Because the upstream gradient differs per token (the reweighted loss gives every sample its own
weight), the gradient cannot be folded into the forward pass as a mean-reduced fused loss would do.

Backends (see :data:`LOSS_IMPLS`):

* ``'chunked'``: the pure-PyTorch autograd function below (CPU and CUDA, any float dtype).
* ``'cce'``: Apple's cut-cross-entropy Triton kernels (CUDA only; ``pip install reweigh[cce]``). They take
  16-bit inputs, so fp32 hidden states and weights are cast to bf16; no head bias.
* ``'materialized'``: the plain ``F.cross_entropy`` over full logits, for comparison and tests.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.nn import functional as F

__all__ = ['LOSS_IMPLS', 'cce_available', 'linear_cross_entropy', 'resolve_loss_impl']

LOSS_IMPLS = ('auto', 'chunked', 'materialized', 'cce')
"""Values of ``loss_impl``; ``auto`` picks one per call (see :func:`resolve_loss_impl`)."""

_CHUNK_ELEMENTS = 1 << 26
"""Default logits per chunk: 64 Mi elements, 256 MiB in fp32 (512 tokens at a 128k vocabulary)."""


@functools.cache
def cce_available() -> bool:
    """Whether the optional cut-cross-entropy package can be imported (it needs Triton).

    Cached: ``auto`` asks on every CUDA forward, and a failed import is searched for again each time.
    """
    try:
        import cut_cross_entropy  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loss_impl(impl: str, device: torch.device, logits: int | None = None, chunk: int = _CHUNK_ELEMENTS) -> str:
    """The backend ``impl`` stands for on ``device``.

    ``auto`` becomes ``cce`` on CUDA where it is installed. Elsewhere it becomes ``materialized`` when the
    ``logits`` (a number of elements) fit in one ``chunk`` anyway, since chunking would then save no
    memory and cost a fourth head matmul, and ``chunked`` beyond that.

    Raises:
        ValueError: For an unknown name, or ``cce`` where it cannot run (no CUDA, not installed).

    Example:
        >>> import torch
        >>> from reweigh.models.linear_ce import resolve_loss_impl
        >>> resolve_loss_impl('auto', torch.device('cpu'), logits=4096 * 128256)
        'chunked'
        >>> resolve_loss_impl('auto', torch.device('cpu'), logits=1024 * 4096)
        'materialized'
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f'loss_impl must be one of {", ".join(LOSS_IMPLS)}; got {impl!r}.')
    if impl == 'auto':
        if device.type == 'cuda' and cce_available():
            return 'cce'
        return 'materialized' if logits is not None and logits <= chunk else 'chunked'
    if impl == 'cce':
        if device.type != 'cuda':
            raise ValueError(f"loss_impl 'cce' needs a CUDA device; the model is on {device.type}. Use 'chunked'.")
        if not cce_available():
            raise ValueError("loss_impl 'cce' needs the cut-cross-entropy package: pip install 'reweigh[cce]'.")
    return impl


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, buffer: torch.Tensor) -> torch.Tensor:
    """``h @ w.T + b`` written into the first rows of ``buffer`` (one buffer for every chunk: on the CPU a fresh
    256 MiB allocation per chunk costs its page faults every time)."""
    logits = torch.mm(h, w.T, out=buffer[:h.shape[0]])
    return logits if b is None else logits.add_(b)


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _lse_and_loss_eager(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, vocab)`` logits, ``(rows, 1)`` targets -> fp32 log-sum-exp and loss per row (overwrites ``logits``)."""
    logits = _acc(logits)
    target = logits.gather(1, targets).squeeze(1)
    peak = logits.amax(dim=1, keepdim=True)
    lse = logits.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))
    return lse, lse - target


def _lse_and_loss_fusable(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as :func:`_lse_and_loss_eager` without in-place ops, so that the compiler fuses it."""
    logits = _acc(logits)
    lse = torch.logsumexp(logits, dim=1)
    return lse, lse - logits.gather(1, targets).squeeze(1)


def _grad_logits_eager(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``d loss / d logits = (softmax(logits) - onehot(target)) * upstream``, in the dtype of ``logits``."""
    grad = _acc(logits).sub_(lse.unsqueeze(1)).exp_()
    grad.scatter_add_(1, targets, torch.full(targets.shape, -1.0, dtype=grad.dtype, device=grad.device))
    return grad.mul_(scale).to(logits.dtype)


def _grad_logits_fusable(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same as :func:`_grad_logits_eager` without in-place ops, so that the compiler fuses it into one pass."""
    columns = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    grad = (_acc(logits) - lse.unsqueeze(1)).exp() - (columns == targets).to(lse.dtype)
    return (grad * scale).to(logits.dtype)


class _Kernels(NamedTuple):
    lse_and_loss: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    grad_logits: Callable[..., torch.Tensor]


_EAGER = _Kernels(_lse_and_loss_eager, _grad_logits_eager)
_compiled: _Kernels | None = None


def _kernels(device: torch.device) -> _Kernels:
    """On CUDA, the per-chunk element-wise work compiled into fused kernels (one read of each chunk of logits
    instead of about ten); eager elsewhere, or if compilation fails."""
    global _compiled
    if device.type != 'cuda' or _compiled is _EAGER:
        return _EAGER
    if _compiled is None:
        _compiled = _Kernels(
            _fallback(torch.compile(_lse_and_loss_fusable, dynamic=True), 'lse_and_loss'),
            _fallback(torch.compile(_grad_logits_fusable, dynamic=True), 'grad_logits'),
        )
    return _compiled


def _fallback(compiled: Callable, name: str) -> Callable:
    def run(*args: torch.Tensor):
        global _compiled
        try:
            return compiled(*args)
        except Exception as e:  # a compiler failure must not stop training: fall back to eager for good
            warnings.warn(f'reweigh: compiling the chunked loss failed ({type(e).__name__}: {e}); running it eagerly.',
                          stacklevel=2)
            _compiled = _EAGER
            return getattr(_EAGER, name)(*args)

    return run


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``(n, hidden) x (vocab, hidden) -> (n,)`` fp32 token losses, one chunk of logits at a time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        ignore_index: int,
        chunk: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0).unsqueeze(1)
        acc = torch.promote_types(dtype, torch.float32)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        loss = torch.empty(n, dtype=acc, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            lse_and_loss = _kernels(hidden.device).lse_and_loss
            buffer = torch.empty(chunk, w.shape[0], dtype=dtype, device=hidden.device)
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                lse[rows], loss[rows] = lse_and_loss(_chunk_logits(h[rows], w, b, buffer), safe_targets[rows])
            del buffer
        loss = torch.where(valid, loss, 0.0)
        ctx.save_for_backward(hidden, weight, bias, safe_targets, valid, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor):  # type: ignore[override]
        hidden, weight, bias, safe_targets, valid, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, chunk = ctx.dtype, ctx.chunk
        acc = lse.dtype
        scale = torch.where(valid, grad_loss.to(acc), 0.0).unsqueeze(1)
        grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            grad_of_logits = _kernels(hidden.device).grad_logits
            buffer = torch.empty(chunk, w.shape[0], dtype=dtype, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = _chunk_logits(h[rows], w, b, buffer)
                grad_logits = grad_of_logits(logits, lse[rows], safe_targets[rows], scale[rows])
                if grad_b is not None:
                    grad_b.add_(grad_logits.sum(0, dtype=acc))
                if grad_h is not None:
                    torch.mm(grad_logits, w, out=grad_h[rows])
                if grad_w is not None:
                    if dtype == acc:
                        grad_w.addmm_(grad_logits.T, h[rows])
                    else:
                        grad_w.add_(grad_logits.T @ h[rows])
                del grad_logits
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None, None, None,
        )


def _chunked(hidden, weight, bias, targets, ignore_index, chunk_size):
    n = hidden.shape[0]
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, ignore_index, max(1, min(chunk, n)), _compute_dtype(hidden),
    )


def _materialized(hidden, weight, bias, targets, ignore_index, chunk_size):
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction='none')


def _cce(hidden, weight, bias, targets, ignore_index, chunk_size):
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    if bias is not None:
        raise ValueError("loss_impl 'cce' does not support a head bias; use 'chunked'.")
    dtype = _compute_dtype(hidden)
    if dtype == torch.float32:  # its kernels take 16-bit inputs (and accumulate in fp32)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with torch.autocast('cuda', enabled=False):
        loss = cce_linear_cross_entropy(hidden.to(dtype), weight.to(dtype), targets, ignore_index=ignore_index, reduction='none')
    return loss.float()


_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {'chunked': _chunked, 'materialized': _materialized, 'cce': _cce}


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    impl: str = 'auto',
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of every token of ``hidden @ weight.T + bias`` against ``targets``, unreduced.

    Under autocast the head runs in the autocast dtype (as ``nn.Linear`` would); log-sum-exp, losses and
    the gradient accumulation over chunks are fp32 (fp64 for fp64 inputs). Positions whose target is ``ignore_index`` get loss 0
    and no gradient. Nothing in it reads a device value on the host.

    Args:
        hidden (torch.Tensor): ``(n, hidden)`` final hidden states (after the last norm).
        weight (torch.Tensor): ``(vocab, hidden)`` head weight (tied or not).
        targets (torch.Tensor): ``(n,)`` integer targets, already aligned with ``hidden``.
        bias (torch.Tensor, optional): ``(vocab,)`` head bias.
        ignore_index (int): Target value without a loss. Default: ``-100``.
        impl (str): One of :data:`LOSS_IMPLS`. Default: ``'auto'``.
        chunk_size (int, optional): Tokens per chunk for ``'chunked'``. Default: as many as make 256 MiB
            of fp32 logits.

    Returns:
        torch.Tensor: ``(n,)`` float32 losses (float64 for float64 inputs), differentiable w.r.t.
        ``hidden``, ``weight`` and ``bias``.

    Raises:
        ValueError: For mismatched shapes or an unavailable backend.

    Example:
        >>> import torch
        >>> from reweigh.models.linear_ce import linear_cross_entropy
        >>> hidden, weight = torch.zeros(3, 4), torch.randn(10, 4)    # zero hidden: uniform over 10 tokens
        >>> linear_cross_entropy(hidden, weight, torch.tensor([1, 2, -100]), chunk_size=2)
        tensor([2.3026, 2.3026, 0.0000])
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f'Expected hidden (n, d), weight (vocab, d) and targets (n,); got {tuple(hidden.shape)}, '
            f'{tuple(weight.shape)} and {tuple(targets.shape)}.',
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
    n, vocab = hidden.shape[0], weight.shape[0]
    chunk = _CHUNK_ELEMENTS if chunk_size is None else chunk_size * vocab
    backend = _BACKENDS[resolve_loss_impl(impl, hidden.device, logits=n * vocab, chunk=chunk)]
    return backend(hidden, weight, bias, targets, ignore_index, chunk_size)
