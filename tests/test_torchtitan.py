"""torchtitan's own ``Trainer`` reweighted (``reweigh.integrations.torchtitan``), trained on CPU on two gloo ranks.

Two processes (FSDP over 2 data-parallel ranks, 2 microbatches of 2 samples per rank and step: a global
batch of 8) run ``ReweighTrainer.train()`` three times: 6 steps straight; 4 steps with a checkpoint at step 3 (an
attempt that wrote history past its last checkpoint); the same run resumed from that checkpoint to step 6.

torchtitan 0.3.0 does not train on a CPU-only machine as it comes; what stops it, and what the
workers do about each (``_run_on_cpu`` and the tiny model), none of which touches reweigh's code:

* No CPU device: ``torchtitan/tools/utils.py:55`` picks ``_get_available_device_type() or "cuda"``, so the
  ``Trainer`` calls ``torch.cuda.set_device`` (``trainer.py:301``) and fails without a driver; its memory monitor
  (``components/metrics.py:42-50``) asks the device module for a name, properties and memory statistics that
  ``torch.cpu`` lacks. The workers point torchtitan's device type at ``cpu`` and answer those queries.
* torchtitan's language models cannot train on CPU: their attention is FlexAttention (no backward on CPU,
  ``torch/nn/attention/flex_attention.py:2082``) or varlen (CUDA kernels), and SDPA is refused for them
  (``models/common/config_utils.py:97``). The workers register a tiny embedding-and-head model (torchtitan's
  ``Embedding`` and ``Linear`` modules in a ``ModelSpec``) and shard it with FSDP as torchtitan's models are (gradient
  division off), reducing with SUM since gloo has no ``PREMUL_SUM``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import types
from dataclasses import dataclass

import pytest

pytest.importorskip('torchtitan')

import pyarrow.compute as pc
import torch
import torch.multiprocessing as mp
import tyro
from s3_emulator import free_port
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.fsdp import fully_shard
from torch.utils.data import IterableDataset
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.dataloader import ParallelAwareDataloader
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.components.tokenizer import BaseTokenizer
from torchtitan.config import DebugConfig, ParallelismConfig, TrainingConfig
from torchtitan.config.manager import custom_registry
from torchtitan.distributed.fsdp import disable_fsdp_gradient_division
from torchtitan.models.common import Embedding, Linear
from torchtitan.protocols import BaseModel
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.trainer import Trainer

from reweigh.algorithms import compute_sample_weights
from reweigh.analysis import load_history
from reweigh.integrations.torchtitan import REWEIGHTER_KEY, ReweightingConfig, ReweighTrainer, with_reweighting

VOCAB, DIM, SEQ, LOCAL_BATCH, RANKS, ACCUMULATION, STEPS, WARMUP, R = 64, 32, 16, 2, 2, 2, 6, 2, 0.5
GLOBAL_BATCH = LOCAL_BATCH * RANKS * ACCUMULATION
MICROBATCH = LOCAL_BATCH * RANKS
"""Samples of one microbatch over both ranks: the batch the weights are normalised over."""


class TinyLM(BaseModel):
    """A next-token model without attention (torchtitan's attention does not train on CPU): embedding, then head."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseModel.Config):
        vocab_size: int = VOCAB
        dim: int = DIM

        def update_from_config(self, *, config, **kwargs) -> None:
            pass

        def get_nparams_and_flops(self, model, seq_len: int) -> tuple[int, int]:
            params = sum(p.numel() for p in model.parameters())
            return params, 6 * params

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.embed = Embedding.Config(num_embeddings=config.vocab_size, embedding_dim=config.dim).build()
        self.head = Linear.Config(in_features=config.dim, out_features=config.vocab_size).build()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def _parallelize(model, *, parallel_dims, **kwargs):
    """FSDP over the data-parallel ranks with gradients summed, not averaged, as torchtitan's models do."""
    if parallel_dims.dp_enabled:
        fully_shard(model, mesh=parallel_dims.get_mesh('dp_shard'))
        disable_fsdp_gradient_division(model)
        model.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


class NoTokenizer(BaseTokenizer):
    """The data is made of token ids; torchtitan's default tokenizer would read files from the Hub."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseTokenizer.Config):
        pass

    def __init__(self, config: Config | None = None, *, tokenizer_path: str | None = None) -> None:
        super().__init__()

    def encode(self, *args, **kwargs) -> list[int]:
        raise NotImplementedError

    def decode(self, *args, **kwargs) -> str:
        raise NotImplementedError

    def get_vocab_size(self) -> int:
        return VOCAB


def sample(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``index``'s tokens and next-token labels: even samples repeat a pattern (easy), odd ones are random and
    end with 3 labels ignored."""
    tokens = torch.randint(0, VOCAB, (SEQ + 1,), generator=torch.Generator().manual_seed(index))
    if index % 2 == 0:
        tokens = torch.arange(SEQ + 1) % 4
    labels = tokens[1:].clone()
    if index % 2:
        labels[-3:] = -100
    return tokens[:-1], labels


class IdDataset(IterableDataset):
    """Each rank's share of the global batches, with the sample ids and domains (``index % 2``) in the input dict."""

    def __init__(self, batch: int, rank: int, ranks: int) -> None:
        self.batch, self.rank, self.ranks, self.position = batch, rank, ranks, 0

    def __iter__(self):
        while True:
            i, self.position = self.position, self.position + 1
            index = (i // self.batch) * self.batch * self.ranks + self.rank * self.batch + i % self.batch
            tokens, labels = sample(index)
            yield {'input': tokens, 'sample_id': torch.tensor(index), 'domain': torch.tensor(index % 2)}, labels

    def state_dict(self) -> dict:
        return {'position': self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state['position']


class IdDataLoader(ParallelAwareDataloader):
    """A torchtitan data loader over :class:`IdDataset` (checkpointed with the run)."""

    @dataclass(kw_only=True, slots=True)
    class Config(ParallelAwareDataloader.Config):
        pass

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, local_batch_size: int,
                 snapshot_every_n_steps: int | None = 1, **kwargs) -> None:
        super().__init__(IdDataset(local_batch_size, dp_rank, dp_world_size), dp_rank=dp_rank,
                         dp_world_size=dp_world_size, batch_size=local_batch_size,
                         snapshot_every_n_steps=snapshot_every_n_steps)


def _model_spec() -> ModelSpec:
    return ModelSpec(name='tiny', flavor='tiny', model=TinyLM.Config(), parallelize_fn=_parallelize, pipelining_fn=None,
                     post_optimizer_build_fn=None, state_dict_adapter=None)


def _config(folder: str, checkpoint: bool) -> ReweighTrainer.Config:
    return ReweighTrainer.Config(
        model_spec=_model_spec(), tokenizer=NoTokenizer.Config(), dataloader=IdDataLoader.Config(),
        optimizer=default_adamw(lr=1e-2), lr_scheduler=LRSchedulersContainer.Config(warmup_steps=0),
        training=TrainingConfig(local_batch_size=LOCAL_BATCH, global_batch_size=GLOBAL_BATCH, seq_len=SEQ, steps=STEPS,
                                disable_cuda_graphs=True),
        metrics=MetricsProcessor.Config(log_freq=1), debug=DebugConfig(seed=0),
        checkpoint=CheckpointManager.Config(enable=checkpoint, interval=3), dump_folder=folder,
        reweighting=ReweightingConfig(strategy='linupper', r=R, warmup=WARMUP, history_folder=f'{folder}/history'),
    )


class _CpuAsAccelerator:
    """``torch.cpu``, answering the accelerator queries torchtitan makes (device selection, memory statistics)."""

    def __getattr__(self, name: str):
        return getattr(torch.cpu, name)

    set_device = staticmethod(lambda device: None)
    get_device_name = staticmethod(lambda device=None: 'cpu')
    current_device = staticmethod(lambda: 0)
    device_count = staticmethod(lambda: 1)
    get_device_properties = staticmethod(lambda device=None: types.SimpleNamespace(total_memory=1 << 30, name='cpu'))
    memory_stats = staticmethod(lambda device=None: {})
    reset_peak_memory_stats = staticmethod(lambda device=None: None)
    empty_cache = staticmethod(lambda: None)


def _run_on_cpu() -> None:
    """Point torchtitan at the CPU in this process (see the module docstring for why each is needed)."""
    import torchtitan.components.metrics
    import torchtitan.distributed.parallel_dims
    import torchtitan.distributed.utils
    import torchtitan.tools.utils

    accelerator = _CpuAsAccelerator()
    for module in (torchtitan.tools.utils, torchtitan.components.metrics, torchtitan.distributed.utils,
                   torchtitan.distributed.parallel_dims):
        module.device_type = 'cpu'
        if hasattr(module, 'device_module'):
            module.device_module = accelerator


class _Spy:
    """torchtitan's metric logger, keeping what is logged: the metrics processor's and reweigh's."""

    def __init__(self) -> None:
        self.logged: dict[int, dict] = {}

    def log(self, metrics: dict, step: int) -> None:
        self.logged.setdefault(step, {}).update(metrics)

    def close(self) -> None:
        pass


def _train(folder: str, rank: int, checkpoint: bool, stop: int = STEPS) -> None:
    """Build the run's trainer from its config as ``torchtitan.train`` does, train to ``stop``, keep rank 0's logs."""
    trainer = _config(folder, checkpoint).build()
    assert type(trainer) is ReweighTrainer
    trainer.metrics_processor.logger = spy = _Spy()
    trainer.should_continue_training = lambda: trainer.step < stop  # stopping early: no final checkpoint
    try:
        trainer.train()
    finally:
        trainer.close()
    if rank == 0:
        with open(f'{folder}/logged-{stop}.json', 'w') as f:
            json.dump(spy.logged, f)


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(RANKS))
    _run_on_cpu()
    try:
        _train(f'{folder}/straight', rank, checkpoint=False)
        _train(f'{folder}/resumed', rank, checkpoint=True, stop=4)  # checkpoint at step 3, history written to 4
        _train(f'{folder}/resumed', rank, checkpoint=True)  # resumes from step 3
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('torchtitan')
    # both ranks fork from one server that imported this module (and torchtitan) once: half the start-up of spawning
    multiprocessing.get_context('forkserver').set_forkserver_preload([__name__])
    mp.start_processes(_worker, args=(free_port(), str(folder)), nprocs=RANKS, join=True, start_method='forkserver')
    return folder


def _rows(folder) -> list[dict]:
    history = load_history(f'{folder}/history')
    return history.sort_by([('step', 'ascending'), ('sample_id', 'ascending')]).to_pylist()


def _logged(folder, stop: int = STEPS) -> dict[int, dict]:
    with open(f'{folder}/logged-{stop}.json') as f:
        return {int(step): metrics for step, metrics in json.load(f).items()}


def test_history_has_every_sample_of_the_global_batch_with_its_id_and_domain(runs):
    rows = _rows(runs / 'straight')
    assert [r['sample_id'] for r in rows] == list(range(STEPS * GLOBAL_BATCH))
    assert [r['step'] for r in rows] == [i // GLOBAL_BATCH for i in range(STEPS * GLOBAL_BATCH)]
    assert [r['domain'] for r in rows] == [i % 2 for i in range(STEPS * GLOBAL_BATCH)]
    assert [r['rank'] for r in rows] == [i % MICROBATCH // LOCAL_BATCH for i in range(STEPS * GLOBAL_BATCH)]
    assert [r['microbatch'] for r in rows] == [i % GLOBAL_BATCH // MICROBATCH for i in range(STEPS * GLOBAL_BATCH)]
    assert [r['tokens'] for r in rows] == [SEQ - 3 * (i % 2) for i in range(STEPS * GLOBAL_BATCH)]


def test_weights_are_normalised_over_the_data_parallel_batch(runs):
    rows = _rows(runs / 'straight')
    for step in range(STEPS):
        for microbatch in range(ACCUMULATION):
            group = [r for r in rows if r['step'] == step and r['microbatch'] == microbatch]
            assert len(group) == MICROBATCH and {r['rank'] for r in group} == set(range(RANKS))
            weights, losses = torch.tensor([r['weight'] for r in group]), torch.tensor([r['loss'] for r in group])
            strategy = 'linupper' if step >= WARMUP else 'uniform'
            assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
            torch.testing.assert_close(weights, compute_sample_weights(losses, strategy, R))
            assert all(r['active'] == (step >= WARMUP) and r['r'] == R for r in group)
            if step >= WARMUP:  # samples of different losses weigh differently
                assert float(weights.max() - weights.min()) > 0.1


def test_the_loss_trained_is_the_reweighted_one_and_plain_torchtitan_in_warmup(runs):
    rows, logged = _rows(runs / 'straight'), _logged(runs / 'straight')
    for step in range(STEPS):
        group = [r for r in rows if r['step'] == step]
        if step < WARMUP:  # torchtitan's own: the token mean over the global batch
            expected = sum(r['loss'] * r['tokens'] for r in group) / sum(r['tokens'] for r in group)
        else:  # the mean over the microbatches of sum_i w_i l_i over each global microbatch
            expected = sum(r['weight'] * r['loss'] for r in group) / ACCUMULATION
        assert logged[step + 1]['loss_metrics/global_avg_loss'] == pytest.approx(expected, rel=1e-5)


def test_the_reweighting_metrics_are_logged_through_torchtitan(runs):
    logged = _logged(runs / 'straight')
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, metrics in logged.items():
        assert metrics['loss_reweighting/active'] == float(step > WARMUP) and metrics['loss_reweighting/r'] == R
        assert metrics['loss_reweighting/nonfinite_losses'] == 0
        assert 0 < metrics['loss_reweighting/weight_min'] <= 1 / MICROBATCH <= metrics['loss_reweighting/weight_max'] < 1
        ess = metrics['loss_reweighting/ess']  # effective sample size, as a share of the microbatch
        assert ess == pytest.approx(1.0) if step <= WARMUP else 0 < ess < 1


def test_resuming_from_torchtitans_checkpoint_continues_the_history_without_duplicates(runs):
    straight, resumed = _rows(runs / 'straight'), _rows(runs / 'resumed')
    keys = ('step', 'microbatch', 'rank', 'sample_id', 'domain', 'tokens', 'active')
    assert [tuple(r[k] for k in keys) for r in resumed] == [tuple(r[k] for k in keys) for r in straight]
    for column in ('loss', 'weight'):
        torch.testing.assert_close(torch.tensor([r[column] for r in resumed]), torch.tensor([r[column] for r in straight]))
    assert sorted(_logged(runs / 'resumed', stop=4)) == [1, 2, 3, 4] and sorted(_logged(runs / 'resumed')) == [4, 5, 6]
    saved = FileSystemReader(str(runs / 'resumed' / 'checkpoint' / 'step-3')).read_metadata().state_dict_metadata
    assert f'train_state.{REWEIGHTER_KEY}.strategy' in saved and 'train_state.step' in saved
    history = load_history(f'{runs}/resumed/history')
    assert pc.max(history['step']).as_py() == STEPS - 1 and history.num_rows == STEPS * GLOBAL_BATCH


def test_the_config_refuses_what_it_cannot_reweigh_and_parses_its_section_from_the_command_line():
    config = with_reweighting(Trainer.Config(model_spec=_model_spec(), loss=ChunkedLossWrapper.Config()))
    assert isinstance(config.loss, CrossEntropyLoss.Config) and config.training.disable_cuda_graphs
    with pytest.raises(ValueError, match='tensor parallel degree 2'):
        ReweighTrainer.Config(parallelism=ParallelismConfig(tensor_parallel_degree=2))
    with pytest.raises(ValueError, match='full_dtensor'):
        ReweighTrainer.Config(parallelism=ParallelismConfig(spmd_backend='full_dtensor'))
    with pytest.raises(ValueError, match='ChunkedLossWrapper'):
        ReweighTrainer.Config(loss=ChunkedLossWrapper.Config())
    with pytest.raises(ValueError, match='disable_cuda_graphs'):
        ReweighTrainer.Config(training=TrainingConfig())
    with pytest.raises(ValueError, match='strategy'):
        ReweighTrainer.Config(reweighting=ReweightingConfig(strategy='nope'))
    args = ['--reweighting.strategy', 'quadratic', '--reweighting.warmup', '50tok', '--reweighting.r', '2']
    parsed = tyro.cli(ReweighTrainer.Config, args=args, default=config, registry=custom_registry)
    assert type(parsed) is ReweighTrainer.Config and parsed.model_spec is config.model_spec
    assert parsed.reweighting.reweighter().settings() == {'strategy': 'quadratic', 'r': 2.0, 'delta': 1.0,
                                                           'warmup': '50tok', 'token_normalize': False}
