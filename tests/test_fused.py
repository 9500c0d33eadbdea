"""The fused reweighting step (``fused=True``): the step after the all-gather compiled into one region.

It must give what the eager step gives (weights equal to the paper's equations, the same loss and gradient, the same
statistics), compile once per setting rather than per temperature, be deterministic, fall back to eager for a strategy
it cannot trace, weigh the global batch over ranks of unequal microbatch sizes, and train a Composer model as the eager
step does. The no-sync test covers it too (``tests/test_no_sync.py``).
"""

from __future__ import annotations

import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from reweigh.algorithms import compute_sample_weights, register_strategy
from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.algorithms.step import _FUSED_WEIGH, reweight_microbatch

LOSSES = [2.3, 0.1, 4.0, 1.7, float('nan'), 3.3, 0.9, float('inf')]
TOKENS = [5, 6, 7, 8, 9, 10, 11, 12]


@register_strategy('test_fused_sqrt', overwrite=True)
def _sqrt(h: torch.Tensor, delta: float) -> torch.Tensor:
    """A user strategy the fused step can trace."""
    return torch.sqrt(h + delta)


@register_strategy('test_fused_branchy', overwrite=True)
def _branchy(h: torch.Tensor, delta: float) -> torch.Tensor:
    """A user strategy that reads a tensor's value: it cannot be traced, so the fused step runs it eagerly."""
    return h if h.max() > 0 else -h


def _step(fused: bool, strategy: str, token_normalize: bool = False, r: float = 0.7):
    losses = torch.tensor(LOSSES, requires_grad=True)
    out = reweight_microbatch(losses * 1.0, torch.tensor(TOKENS), strategy=strategy, r=r, delta=1.0, active=True,
                              token_normalize=token_normalize, fused=fused)
    out.loss.backward()
    return out, losses.grad


@pytest.mark.parametrize('token_normalize', [False, True])
@pytest.mark.parametrize('strategy', ['linupper', 'quadratic', 'extremes', 'upper', 'uniform', 'test_fused_sqrt'])
def test_the_fused_step_gives_the_eager_steps_weights_loss_gradient_and_statistics(strategy, token_normalize):
    fused, fused_grad = _step(True, strategy, token_normalize)
    eager, eager_grad = _step(False, strategy, token_normalize)

    torch.testing.assert_close(fused.record.weights, eager.record.weights)
    torch.testing.assert_close(fused.loss, eager.loss)
    torch.testing.assert_close(fused_grad, eager_grad)  # world * w_i, 0 for the non-finite losses
    torch.testing.assert_close(fused.stats.vector, eager.stats.vector)
    if not token_normalize:  # the paper's equations
        torch.testing.assert_close(fused.record.weights, compute_sample_weights(torch.tensor(LOSSES), strategy, 0.7))
    assert fused.record.weights[4] == 0 and fused.record.weights[7] == 0 and torch.isfinite(fused.loss)
    assert fused.stats.nonfinite == 2


def test_the_fused_step_runs_compiled_code_here():
    """On this machine's torch the step compiles (no silent fallback to eager): a graph exists for its settings."""
    _step(True, 'linupper')
    assert any(graph is not None for graph in _FUSED_WEIGH.graphs.values()), _FUSED_WEIGH.graphs


def test_all_non_finite_losses_keep_the_fused_loss_non_finite():
    losses = torch.tensor([float('nan'), float('inf')], requires_grad=True)
    out = reweight_microbatch(losses, torch.tensor([3, 3]), strategy='linupper', r=1.0, delta=1.0, active=True, fused=True)
    assert torch.equal(out.record.weights, torch.tensor([0.5, 0.5])) and not torch.isfinite(out.loss)


def test_warm_up_and_a_temperature_schedule_compile_once_each_not_every_step():
    reweighter = Reweighter('quadratic', warmup='3ba', r_schedule=lambda progress: 1.0 + progress.step, fused=True)
    losses, tokens = torch.tensor([1.0, 2.0, 3.5, 0.5, 2.5]), torch.tensor([4, 4, 4, 4, 4])
    graphs = []
    for step in range(8):
        out = reweighter.step(losses.clone().requires_grad_(), tokens, Progress(step))
        graphs.append(len(_FUSED_WEIGH.graphs))
        expected = compute_sample_weights(losses, 'quadratic' if step >= 3 else 'uniform', 1.0 + step)
        torch.testing.assert_close(out.record.weights, expected)
    assert graphs[3:] == [graphs[3]] * 5, graphs  # r changed at every step; the graphs did not grow after warm-up
    assert graphs[0] == graphs[2], graphs


def test_the_fused_step_is_deterministic():
    first, first_grad = _step(True, 'linupper', r=0.3)
    second, second_grad = _step(True, 'linupper', r=0.3)
    assert torch.equal(first.record.weights, second.record.weights) and torch.equal(first.loss, second.loss)
    assert torch.equal(first_grad, second_grad) and torch.equal(first.stats.vector, second.stats.vector)


def test_a_strategy_that_reads_a_value_runs_eagerly_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger='reweigh.algorithms.fused'):
        fused, fused_grad = _step(True, 'test_fused_branchy')
        again, _ = _step(True, 'test_fused_branchy')
    eager, eager_grad = _step(False, 'test_fused_branchy')
    torch.testing.assert_close(fused.record.weights, eager.record.weights)
    torch.testing.assert_close(fused_grad, eager_grad)
    torch.testing.assert_close(again.record.weights, eager.record.weights)
    warnings = [r.getMessage() for r in caplog.records if 'could not compile' in r.getMessage()]
    assert len(warnings) == 1 and 'runs eagerly' in warnings[0] and '\n' not in warnings[0], warnings


def test_fused_other_than_true_false_or_auto_is_an_error():
    with pytest.raises(ValueError, match=r"fused must be 'auto', true or false, got 'yes'"):
        Reweighter(fused='yes')


WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=WORLD)
    mine = slice(0, 3) if rank == 0 else slice(3, 8)  # 3 and 5 samples, padded to a capacity of 5
    losses = torch.tensor(LOSSES)[mine].requires_grad_()
    out = reweight_microbatch(losses * 1.0, torch.tensor(TOKENS)[mine], strategy='linupper', r=0.7, delta=1.0,
                              active=True, capacity=5, fused=True)
    out.loss.backward()
    compiled = any(graph is not None for graph in _FUSED_WEIGH.graphs.values())
    torch.save({'weights': out.record.weights, 'grad': losses.grad, 'compiled': compiled, 'stats': out.stats.vector},
               os.path.join(out_dir, f'{rank}.pt'))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_ranks_of_unequal_microbatch_sizes_use_the_global_weights(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method='spawn')
    results = [torch.load(tmp_path / f'{rank}.pt') for rank in range(WORLD)]
    single = compute_sample_weights(torch.tensor(LOSSES), 'linupper', 0.7)
    assert all(r['compiled'] for r in results)
    torch.testing.assert_close(torch.cat([r['weights'] for r in results]), single)
    torch.testing.assert_close(torch.cat([r['grad'] for r in results]), WORLD * single)  # averaged by DDP: sum w_i grad
    torch.testing.assert_close(results[0]['stats'], results[1]['stats'])  # both ranks see the same global batch
    assert results[0]['stats'][3] == 2  # the two non-finite losses, both on rank 1


@pytest.mark.composer
def test_composer_training_with_the_fused_step_equals_eager_training():
    from lm_helpers import make_trainer, params, tiny_gpt2

    from reweigh.algorithms import LossReweighting

    trained = {}
    for fused in (False, True):
        algorithm = LossReweighting('linupper', r=0.7, warmup='1ba', fused=fused)
        trainer = make_trainer(tiny_gpt2(), [algorithm], max_duration='4ba', device_train_microbatch_size=4)
        trainer.fit()
        trained[fused] = params(trainer)
        assert algorithm.last_microbatch.active
    for name, value in trained[False].items():
        torch.testing.assert_close(trained[True][name], value, rtol=1e-5, atol=1e-6)
