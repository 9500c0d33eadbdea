"""Sharded training: LossReweighting under FSDP gives the same losses, weights and parameters as DDP.

Composer 0.32.1's FSDP (FSDP1, ``parallelism_config={'fsdp': {...}}``, which is what ``fsdp_config`` in a
``reweigh train`` config becomes) cannot run on CPU: ``prepare_fsdp_module`` passes
``device_id=torch.cuda.current_device()`` to ``FullyShardedDataParallel``, which raises "Found no NVIDIA
driver on your system" without a GPU. Its FSDP2 path (``FSDP2Config``: ``torch.distributed.fsdp.fully_shard``)
does run on CPU with gloo, so on CPU the tests run that: two ranks train a tiny GPT-2 (tied embeddings,
so the fused loss head shares its weight with the token embedding) and a tiny Llama with every transformer
block and the Hugging Face model sharded, and every microbatch's reweighted loss, per-sample losses and
weights, and the final parameters match a DDP run over the same samples to 1e-5 relative. torch 2.7's gloo
sums where FSDP2 asks its reduce-scatter to average (pytorch/pytorch#162338), so FSDP2 gradients on CPU
come out ``world_size`` times too large; the test divides them back (see :func:`gloo_reduce_scatter_averages`).
On a GPU, a test runs Composer's own FSDP (FULL_SHARD, one rank) with the fused loss and amp_bf16.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from composer.core import Callback, State
from composer.loggers import Logger
from lm_helpers import SEQ, VOCAB, TokenDataset, free_port, make_trainer, set_rank_env, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting
from reweigh.models import ReweighCausalLM, build_causal_lm

WORLD, BATCH, STEPS = 2, 8, 3
ALGORITHM = dict(strategy='linupper', r=0.7, warmup='1ba')
FAMILIES = ('gpt2', 'llama')
RTOL, ATOL = 1e-5, 1e-7


def tiny_model(family: str) -> ReweighCausalLM:
    if family == 'gpt2':
        return tiny_gpt2()  # n_layer=1, tied embeddings
    torch.manual_seed(0)
    return build_causal_lm(
        'llama', hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ,
    )


class Recorder(Callback):
    """Every microbatch's loss after LossReweighting replaced it, and the losses and weights it used."""

    def __init__(self, algorithm: LossReweighting) -> None:
        self.algorithm = algorithm
        self.rows: list[dict[str, torch.Tensor]] = []

    def after_loss(self, state: State, logger: Logger) -> None:
        used = self.algorithm.last_microbatch
        assert used is not None
        self.rows.append({
            'loss': state.loss.detach().clone(), 'losses': used.losses.clone(), 'weights': used.weights.clone(),
            'active': torch.tensor(used.active),
        })


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded parameters by name (a collective under FSDP2: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return {
        k.removeprefix('module.'): (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for k, p in model.named_parameters()
    }


def gloo_reduce_scatter_averages() -> bool:
    """Whether ``reduce_scatter_tensor(op=AVG)`` averages; torch 2.7's gloo sums instead, silently.

    FSDP2 reduces fp32 gradients that way, so on gloo they come out ``world_size`` times too large
    (https://github.com/pytorch/pytorch/issues/162338, open). The test then divides FSDP2's reduce-scatter
    output by the world size (``set_all_reduce_hook``), which is what NCCL's AVG does.
    """
    import torch.distributed as torch_dist

    shard = torch.empty(1)
    torch_dist.reduce_scatter_tensor(shard, torch.ones(WORLD), op=torch_dist.ReduceOp.AVG)
    return float(shard) == 1.0


def train(family: str, sharded: bool) -> dict[str, Any]:
    from composer.utils import dist
    from composer.utils.parallelism import FSDP2Config
    from torch.distributed.fsdp import FSDPModule

    model = tiny_model(family)
    dataset = TokenDataset()
    loader = DataLoader(dataset, batch_size=BATCH // WORLD, sampler=dist.get_sampler(dataset, shuffle=False))
    algorithm = LossReweighting(**ALGORITHM)
    recorder = Recorder(algorithm)
    trainer = make_trainer(
        model, [algorithm], train_dataloader=loader, max_duration=f'{STEPS}ba', callbacks=[recorder],
        device_train_microbatch_size=2, parallelism_config={'fsdp': FSDP2Config()} if sharded else None,
    )
    if sharded and not gloo_reduce_scatter_averages():
        for module in trainer.state.model.modules():
            if isinstance(module, FSDPModule):
                module.set_all_reduce_hook(lambda reduced: reduced.div_(WORLD))
    trainer.fit()
    return {
        'rows': recorder.rows,
        'params': full_parameters(trainer.state.model),
        'sharded_modules': sorted(
            type(m).__name__.removeprefix('FSDP') for m in trainer.state.model.modules() if isinstance(m, FSDPModule)
        ),
        'tied': model.model.get_output_embeddings().weight is model.model.get_input_embeddings().weight,
        'fused': model.fused,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, WORLD, port)
    results = {(family, sharded): train(family, sharded) for family in FAMILIES for sharded in (False, True)}
    torch.save(results, os.path.join(out_dir, f'{rank}.pt'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> list[dict[tuple[str, bool], dict[str, Any]]]:
    out_dir = tmp_path_factory.mktemp('sharded')
    mp.start_processes(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True, start_method='spawn')
    return [torch.load(out_dir / f'{rank}.pt', weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize('family', FAMILIES)
def test_fsdp2_shards_every_transformer_block_and_keeps_the_fused_head(family, runs):
    block = {'gpt2': 'GPT2Block', 'llama': 'LlamaDecoderLayer'}[family]
    n_blocks = {'gpt2': 1, 'llama': 2}[family]
    for rank_runs in runs:
        sharded, plain = rank_runs[family, True], rank_runs[family, False]
        assert plain['sharded_modules'] == []
        assert sharded['sharded_modules'].count(block) == n_blocks
        assert {'GPT2LMHeadModel', 'LlamaForCausalLM'} & set(sharded['sharded_modules'])
        assert sharded['tied'] == plain['tied'] == (family == 'gpt2')
        assert sharded['fused'] and plain['fused']


@pytest.mark.parametrize('family', FAMILIES)
def test_fsdp2_losses_and_weights_per_microbatch_equal_ddp(family, runs):
    for rank_runs in runs:
        sharded, plain = rank_runs[family, True]['rows'], rank_runs[family, False]['rows']
        assert len(sharded) == len(plain) == STEPS * (BATCH // WORLD) // 2
        assert [bool(r['active']) for r in sharded] == [False, False] + [True] * (len(sharded) - 2)
        for s, p in zip(sharded, plain):
            for key in ('loss', 'losses', 'weights'):
                torch.testing.assert_close(s[key], p[key], rtol=RTOL, atol=ATOL)
    # the weights of a microbatch are normalised over both ranks
    for step in range(len(runs[0][family, True]['rows'])):
        total = sum(float(rank_runs[family, True]['rows'][step]['weights'].sum()) for rank_runs in runs)
        assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_fsdp2_final_parameters_equal_ddp(family, runs):
    for rank_runs in runs:
        sharded, plain = rank_runs[family, True]['params'], rank_runs[family, False]['params']
        initial = full_parameters(tiny_model(family))
        assert sharded.keys() == plain.keys() == initial.keys()
        assert any(not torch.equal(plain[k], initial[k]) for k in plain)  # training moved the parameters
        for k, v in plain.items():
            torch.testing.assert_close(sharded[k], v, rtol=RTOL, atol=ATOL)


@pytest.fixture
def one_gpu_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A world of one for Composer's FSDP, whose process group is torn down again afterwards."""
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', LOCAL_WORLD_SIZE='1', NODE_RANK='0',
                           MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    yield
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():  # later tests must not find a process group without its environment
        torch_dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_composer_fsdp_full_shard_on_one_gpu_with_the_fused_loss(one_gpu_rank):
    from composer import Trainer
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = tiny_model('llama')
    assert model.fused
    algorithm = LossReweighting(**ALGORITHM)
    recorder = Recorder(algorithm)
    trainer = Trainer(
        model=model, train_dataloader=DataLoader(TokenDataset(), batch_size=BATCH, shuffle=False),
        optimizers=torch.optim.AdamW(model.parameters(), lr=1e-3), max_duration=f'{STEPS}ba',
        algorithms=[algorithm], callbacks=[recorder], device='gpu', precision='amp_bf16',
        parallelism_config={'fsdp': {'sharding_strategy': 'FULL_SHARD', 'mixed_precision': 'PURE'}},
        device_train_microbatch_size=4, progress_bar=False,
    )
    try:
        trainer.fit()
        assert any(isinstance(m, FullyShardedDataParallel) for m in trainer.state.model.modules())
    finally:
        trainer.close()
    assert len(recorder.rows) == STEPS * 2
    assert [bool(r['active']) for r in recorder.rows] == [False, False] + [True] * (STEPS * 2 - 2)
    for row in recorder.rows:
        assert torch.isfinite(row['loss']).all() and torch.isfinite(row['losses']).all()
        assert row['losses'].dtype == row['weights'].dtype == torch.float32
        assert float(row['weights'].sum()) == pytest.approx(1.0, abs=1e-5)
