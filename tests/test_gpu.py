"""CUDA-only branches: the fused loss on the GPU (chunked and cut-cross-entropy), deferred metrics and the
pinned-memory history copies in a real Composer run. Skipped where no CUDA device is present; run with
``pytest -m gpu``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from composer import Trainer
from composer.loggers import LoggerDestination
from lm_helpers import TokenDataset, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting
from reweigh.callbacks import LossHistory
from reweigh.models import linear_cross_entropy
from reweigh.models.linear_ce import cce_available, resolve_loss_impl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]


def _grads(impl: str, hidden, weight, targets, upstream, dtype=None):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    with torch.autocast('cuda', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = linear_cross_entropy(h, w, targets, impl=impl, chunk_size=300)
    gh, gw = torch.autograd.grad((loss * upstream).sum(), (h, w))
    return loss.detach(), gh, gw


def _inputs(n: int = 1000, d: int = 64, vocab: int = 5000):
    g = torch.Generator(device='cuda').manual_seed(0)
    hidden = torch.randn(n, d, device='cuda', generator=g)
    weight = torch.randn(vocab, d, device='cuda', generator=g) / d**0.5
    targets = torch.randint(0, vocab, (n,), device='cuda', generator=g)
    targets[::7] = -100
    upstream = torch.rand(n, device='cuda', generator=g)  # per-token weights, as the reweighted loss gives
    return hidden, weight, targets, upstream


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_chunked_equals_materialized_on_cuda_fp32():
    hidden, weight, targets, upstream = _inputs()
    ref = _grads('materialized', hidden, weight, targets, upstream)
    out = _grads('chunked', hidden, weight, targets, upstream)
    for a, b in zip(out, ref):
        assert _rel(a, b) < 1e-5


def test_chunked_under_bf16_autocast_keeps_fp32_losses():
    hidden, weight, targets, upstream = _inputs()
    ref = _grads('materialized', hidden, weight, targets, upstream)  # fp32 reference
    loss, gh, gw = _grads('chunked', hidden, weight, targets, upstream, dtype=torch.bfloat16)
    assert loss.dtype == torch.float32 and gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert _rel(loss, ref[0]) < 1e-2 and _rel(gh, ref[1]) < 3e-2 and _rel(gw, ref[2]) < 3e-2


@pytest.mark.skipif(not cce_available(), reason='cut-cross-entropy is not installed')
def test_cce_backend_matches_materialized_with_per_token_gradients():
    hidden, weight, targets, upstream = _inputs()
    ref = _grads('materialized', hidden, weight, targets, upstream)
    loss, gh, gw = _grads('cce', hidden, weight, targets, upstream)
    assert loss.dtype == torch.float32
    assert bool((loss[::7] == 0).all())  # ignored targets
    assert _rel(loss, ref[0]) < 1e-2 and _rel(gh, ref[1]) < 3e-2 and _rel(gw, ref[2]) < 3e-2
    assert resolve_loss_impl('auto', torch.device('cuda')) == 'cce'


class _Steps(LoggerDestination):
    """Keeps the step each metric was logged under (InMemoryLogger keeps the time of logging)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_training_on_gpu_logs_every_step_and_records_history(tmp_path):
    model = tiny_gpt2(loss_impl='chunked')
    logger = _Steps()
    history = LossHistory(folder=str(tmp_path / 'history'), flush_interval='2ba')
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(TokenDataset(), batch_size=8),
        optimizers=torch.optim.SGD(model.parameters(), lr=0.5),
        max_duration='5ba',
        algorithms=[LossReweighting(warmup='1ba')],
        callbacks=[history],
        loggers=[logger],
        device='gpu',
        precision='amp_bf16',
        device_train_microbatch_size=4,
        progress_bar=False,
        seed=17,
    )
    trainer.fit()
    # deferred metrics: one step late on CUDA, flushed at FIT_END, so every step is there once
    logged = [(step, m['loss_reweighting/active']) for step, m in logger.rows if 'loss_reweighting/ess' in m]
    assert logged == [(0, 0.0), (1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]
    # pinned-memory copies of the history: every sample of every step, losses fp32 and finite
    parts = sorted((tmp_path / 'history').rglob('*.parquet'))
    table = pa.concat_tables([pq.read_table(p) for p in parts]).to_pandas()
    assert len(table) == 5 * 8
    assert table['loss'].dtype == 'float32' and table['loss'].notna().all()
    per_step = table.groupby('step')['weight'].sum()
    assert per_step.sub(2.0).abs().max() < 1e-5  # two microbatches, each normalised to 1


def test_the_fused_step_compiles_on_cuda_by_default_and_equals_the_eager_step():
    """``fused='auto'`` compiles on CUDA; the compiled step's weights, loss, gradient and statistics equal the eager
    step's, with the temperature made on the device (no copy from the host), and a new temperature compiles nothing."""
    from reweigh.algorithms.reweighter import Progress, Reweighter
    from reweigh.algorithms.step import _FUSED_WEIGH

    losses = torch.tensor([2.3, 0.1, 4.0, float('nan'), 3.3, 0.9], device='cuda')
    tokens = torch.tensor([5, 6, 7, 8, 9, 10], device='cuda')
    results = {}
    for fused in ('auto', False):
        reweighter = Reweighter('linupper', r=0.7, warmup=0, fused=fused)
        leaf = losses.clone().requires_grad_()
        out = reweighter.step(leaf * 1.0, tokens, Progress(step=1))
        out.loss.backward()
        results[fused] = (out.record.weights, out.loss.detach(), leaf.grad, out.stats.vector)
    assert any(graph is not None for graph in _FUSED_WEIGH.graphs.values()), 'auto did not compile on CUDA'
    for compiled, eager in zip(results['auto'], results[False]):
        torch.testing.assert_close(compiled, eager)
    graphs = len(_FUSED_WEIGH.graphs)
    reweighter = Reweighter('linupper', r=0.7, warmup=0, r_schedule=lambda progress: 1.0 + progress.step)
    for step in range(3):
        reweighter.step(losses.clone().requires_grad_(), tokens, Progress(step=step))
    assert len(_FUSED_WEIGH.graphs) == graphs
