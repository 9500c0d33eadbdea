"""reweigh in OLMo-core's own Trainer on CPU: the reweighted loss, its history, checkpoints and data parallelism.

Every test runs ``olmo_core.train.Trainer.fit`` on a tiny Llama-like transformer for a few steps, on numpy token
files this module writes (two sources, ``code`` and ``web``, named in their metadata), with gradient accumulation
(two micro-batches per batch) unless said otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip('olmo_core')

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from olmo_core.data import DataCollator, NumpyDataLoaderBase, NumpyFSLDataset  # noqa: E402
from olmo_core.distributed.parallel import DataParallelType  # noqa: E402
from olmo_core.exceptions import OLMoConfigurationError  # noqa: E402
from olmo_core.nn.transformer import TransformerConfig  # noqa: E402
from olmo_core.optim import AdamWConfig  # noqa: E402
from olmo_core.train import Duration, TrainerConfig  # noqa: E402
from olmo_core.train.callbacks import Callback, CheckpointerCallback  # noqa: E402
from olmo_core.train.train_module import (  # noqa: E402
    TransformerDataParallelConfig,
    TransformerPipelineParallelConfig,
    TransformerTensorParallelConfig,
    TransformerTrainModuleConfig,
)
from s3_emulator import free_port  # noqa: E402

from reweigh.algorithms import compute_sample_weights, per_sample_loss  # noqa: E402
from reweigh.analysis import load_history  # noqa: E402
from reweigh.history import list_parts, read_metadata  # noqa: E402
from reweigh.integrations.olmo_core import LossHistoryCallback, ReweighTrainModuleConfig  # noqa: E402

SEQ, VOCAB, INSTANCES, BATCH, MICRO = 16, 64, 32, 8, 4  # tokens per instance, vocabulary, instances per source
DOMAINS = ('code', 'web')
R, WARMUP, STEPS = 0.5, 2, 4


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Two sources of ``INSTANCES`` instances; half of ``code`` is a repeated pattern (easy), the rest random."""
    root = tmp_path_factory.mktemp('olmo-data')
    for i, name in enumerate(DOMAINS):
        tokens = np.random.default_rng(i).integers(1, VOCAB, INSTANCES * SEQ, dtype=np.uint16)
        if name == 'code':
            tokens[:INSTANCES * SEQ // 2] = np.arange(INSTANCES * SEQ // 2) % 4 + 1
        tokens.tofile(root / f'{name}.npy')
    return root


def _loader(data, work, rank: int = 0, world: int = 1) -> NumpyDataLoaderBase:
    dataset = NumpyFSLDataset(*(str(data / f'{name}.npy') for name in DOMAINS), sequence_length=SEQ, pad_token_id=0,
                              eos_token_id=0, vocab_size=VOCAB, metadata=[{'domain': name} for name in DOMAINS])
    return NumpyDataLoaderBase.wrap_numpy_dataset(dataset, global_batch_size=BATCH * SEQ, work_dir=str(work),
                                                  collator=DataCollator(pad_token_id=0), dp_world_size=world, dp_rank=rank)


def _trainer(data, folder, *, steps: int = STEPS, micro: int = MICRO, plain: bool = False, checkpoint_every: int | None = None,
             callbacks: dict[str, Callback] | None = None, rank: int = 0, world: int = 1, **settings: Any):
    """A Trainer of a tiny transformer on ``data``: OLMo-core's ``TransformerTrainModule`` with ``plain``, else reweigh's
    (linupper, ``R``, ``WARMUP`` unless ``settings`` say otherwise) with the loss history in ``folder/history``."""
    torch.manual_seed(0)
    model = TransformerConfig.llama_like(d_model=32, vocab_size=VOCAB, n_layers=1, n_heads=2, hidden_size_multiple_of=16)
    optim = AdamWConfig(lr=1e-2, eps=1e-4)  # eps: a near-zero gradient, whose sign is rounding, moves its weight little
    common = dict(rank_microbatch_size=micro * SEQ, max_sequence_length=SEQ, optim=optim,
                  dp_config=TransformerDataParallelConfig(name=DataParallelType.ddp) if world > 1 else None)
    callbacks = dict(callbacks or {})
    if plain:
        module = TransformerTrainModuleConfig(**common).build(model.build())
    else:
        settings = {'strategy': 'linupper', 'r': R, 'warmup': WARMUP, 'domains': list(DOMAINS), **settings}
        module = ReweighTrainModuleConfig(**common, **settings).build(model.build())
        callbacks['loss_history'] = LossHistoryCallback(folder=str(folder / 'history'), flush_interval=2)
    if checkpoint_every is not None:
        callbacks['checkpointer'] = CheckpointerCallback(save_interval=checkpoint_every, save_async=False,
                                                         pre_train_checkpoint=False)
    config = TrainerConfig(save_folder=str(folder / 'run'), max_duration=Duration.steps(steps), metrics_collect_interval=1,
                           no_checkpoints=checkpoint_every is None, callbacks=callbacks)
    return config.build(module, _loader(data, folder / 'work', rank, world))


@dataclass
class _Probe(Callback):
    """Keeps each step's batch, gradients and metrics, and the gradients of the two losses computed by hand."""
    priority: ClassVar[int] = -1
    batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    grads: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    reweighted: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    plain: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def pre_step(self, batch: dict[str, Any]) -> None:
        self.batches[self.step - 1] = (batch['input_ids'].clone(), batch['index'].clone())

    def pre_optim_step(self) -> None:
        """OLMo-core has backpropagated the batch and not stepped yet: the gradients, and those of the losses
        computed here from the same parameters."""
        step = self.step - 1
        model = self.trainer.train_module.model
        params = [p for p in model.parameters() if p.grad is not None]
        self.grads[step] = [p.grad.clone() for p in params]
        input_ids = self.batches[step][0]
        chunks = input_ids.split(MICRO)
        reweighted, plain = 0.0, 0.0
        for chunk in chunks:
            per_sample = per_sample_loss(model(chunk), chunk)  # labels aligned with the inputs, shifted as OLMo-core's
            weights = compute_sample_weights(per_sample.loss.detach(), 'linupper', R)
            reweighted = reweighted + (weights * per_sample.loss).sum() / len(chunks)  # averaged over the micro-batches
            plain = plain + (per_sample.loss * per_sample.tokens).sum() / (input_ids.numel() - len(input_ids))
        self.reweighted[step] = list(torch.autograd.grad(reweighted, params, retain_graph=True))
        self.plain[step] = list(torch.autograd.grad(plain, params))  # OLMo-core's: token losses over target tokens

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if step > 0:  # step 0: OLMo-core's dry run
            self.metrics[step - 1] = dict(metrics)


class _Crash(Callback):
    """Stops the run with an error after step ``at`` (1-based), its checkpoints and history rows done; notes the last
    step of the history on disk when a checkpoint has been saved."""

    def __init__(self, at: int, history) -> None:
        self.at, self.history, self.on_disk = at, history, {}

    def post_checkpoint_saved(self, path) -> None:
        self.on_disk[self.step] = max(part.last for part in list_parts(self.history, recursive=True))

    def post_step(self) -> None:
        if self.step == self.at:
            raise RuntimeError('simulated crash')


@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    """A reweighted run of ``STEPS`` steps with a probe; its folder and the probe."""
    folder = tmp_path_factory.mktemp('olmo-run')
    probe = _Probe()
    trainer = _trainer(data, folder, callbacks={'probe': probe})
    trainer.fit()
    return folder, probe


def _rows(folder) -> list[dict]:
    order = [('step', 'ascending'), ('microbatch', 'ascending'), ('rank', 'ascending'), ('sample_id', 'ascending')]
    return load_history(folder).sort_by(order).to_pylist()


def test_history_has_every_instance_of_every_step_with_its_id_and_domain(run):
    folder, probe = run
    rows = _rows(folder / 'history')
    assert len(rows) == STEPS * BATCH
    assert read_metadata(folder / 'history' / 'rank0')['domains'] == list(DOMAINS)
    for step in range(STEPS):
        ids = sorted(r['sample_id'] for r in rows if r['step'] == step)
        assert ids == sorted(probe.batches[step][1].tolist())  # the data loader's instance indices
        assert all(r['domain'] == r['sample_id'] // INSTANCES for r in rows if r['step'] == step)  # code, then web
        for microbatch in range(BATCH // MICRO):
            group = [r for r in rows if (r['step'], r['microbatch']) == (step, microbatch)]
            weights, losses = torch.tensor([r['weight'] for r in group]), torch.tensor([r['loss'] for r in group])
            assert len(group) == MICRO and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
            assert all(r['active'] == (step >= WARMUP) and r['tokens'] == SEQ - 1 for r in group)
            expected = compute_sample_weights(losses, 'linupper', R) if step >= WARMUP else torch.full((MICRO,), 1 / MICRO)
            torch.testing.assert_close(weights, expected)


def test_gradient_is_the_reweighted_loss_after_warmup_and_olmo_cores_before(run):
    _, probe = run
    assert sorted(probe.grads) == list(range(STEPS))
    for step in range(STEPS):
        expected, other = (probe.reweighted, probe.plain) if step >= WARMUP else (probe.plain, probe.reweighted)
        for grad, hand in zip(probe.grads[step], expected[step], strict=True):
            torch.testing.assert_close(grad, hand, rtol=1e-4, atol=1e-6)
        assert any(not torch.allclose(g, h, rtol=1e-2, atol=1e-4) for g, h in zip(probe.grads[step], other[step]))


def test_metrics_are_logged_with_olmo_cores(run):
    _, probe = run
    assert sorted(probe.metrics) == list(range(STEPS))
    for step, metrics in probe.metrics.items():
        assert metrics['loss_reweighting/active'] == float(step >= WARMUP)
        assert metrics['loss_reweighting/r'] == R
        assert 0 < metrics['loss_reweighting/weight_min'] <= 1 / MICRO <= metrics['loss_reweighting/weight_max'] < 1
        assert metrics['train/CE loss'] == pytest.approx(metrics['loss_reweighting/mean_loss'], rel=1e-5)
        assert metrics['loss_reweighting/nonfinite_losses'] == 0


def test_warmup_trains_what_olmo_core_trains_and_loads_its_checkpoints(data, tmp_path):
    plain = _trainer(data, tmp_path / 'plain', steps=2, plain=True)
    plain.fit()
    warm = _trainer(data, tmp_path / 'warm', steps=2, warmup=10)
    warm.fit()
    ours, theirs = warm.train_module.model.state_dict(), plain.train_module.model.state_dict()
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6)
    assert all(not r['active'] for r in _rows(tmp_path / 'warm' / 'history'))
    path = plain.save_checkpoint()  # a plain OLMo-core checkpoint (no reweighter state) loads into reweigh's module
    fresh = _trainer(data, tmp_path / 'fresh', steps=2)
    fresh.load_checkpoint(path)
    assert fresh.global_step == 2
    for name, value in fresh.train_module.model.state_dict().items():
        torch.testing.assert_close(value, theirs[name])


def test_resume_from_an_olmo_core_checkpoint_continues_the_history(data, run, tmp_path):
    straight, _ = run
    crash = _Crash(at=3, history=tmp_path / 'history')
    with pytest.raises(RuntimeError, match='simulated crash'):  # checkpoint at step 2, dies after step 3
        _trainer(data, tmp_path, checkpoint_every=2, callbacks={'crash': crash}).fit()
    assert crash.on_disk == {2: 1}  # the history of the steps before a checkpoint is written before it
    assert max(r['step'] for r in _rows(tmp_path / 'history')) == 2  # rows past the checkpoint
    resumed = _trainer(data, tmp_path, checkpoint_every=2)
    resumed.fit()  # loads step 2 from the save folder
    rows, expected = _rows(tmp_path / 'history'), _rows(straight / 'history')
    assert [(r['step'], r['microbatch'], r['sample_id']) for r in rows] == [
        (r['step'], r['microbatch'], r['sample_id']) for r in expected]
    for key in ('loss', 'weight'):
        torch.testing.assert_close(torch.tensor([r[key] for r in rows]), torch.tensor([r[key] for r in expected]))
    other = _trainer(data, tmp_path / 'other', r=2.0)  # the reweighter's state is in the checkpoint
    with pytest.warns(UserWarning, match=r'ReweighTrainModule settings differ from the checkpoint.*r: 0\.5 -> 2\.0'):
        other.load_checkpoint(str(tmp_path / 'run' / 'step2'))


def test_configuration_errors(data, tmp_path):
    model = TransformerConfig.llama_like(d_model=32, vocab_size=VOCAB, n_layers=1, n_heads=2, hidden_size_multiple_of=16)
    config = ReweighTrainModuleConfig(rank_microbatch_size=SEQ, max_sequence_length=SEQ, optim=AdamWConfig(),
                                      pp_config=TransformerPipelineParallelConfig(degree=2))
    with pytest.raises(OLMoConfigurationError, match='pipeline parallelism'):
        config.build(model.build())
    config = config.replace(pp_config=None, tp_config=TransformerTensorParallelConfig(degree=2))
    with pytest.raises(OLMoConfigurationError, match='tp_config .* are not supported'):
        config.build(model.build())
    plain = _trainer(data, tmp_path / 'plain', plain=True)
    with pytest.raises(OLMoConfigurationError, match='records a ReweighTrainModule, not TransformerTrainModule'):
        plain.add_callback('loss_history', LossHistoryCallback(folder=str(tmp_path / 'history')))
    unnamed = _trainer(data, tmp_path / 'unnamed', steps=1, domains=None)
    with pytest.raises(ValueError, match=r"names domain '(code|web)', which is not in domains=None"):
        unnamed.fit()


def _worker(rank: int, port: int, data, folder) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OLMO_SHARED_FS='1')
    torch.distributed.init_process_group('gloo', rank=rank, world_size=2)
    try:
        trainer = _trainer(data, folder, steps=3, micro=BATCH // 2, warmup=1, rank=rank, world=2)
        trainer.fit()
        if rank == 0:
            torch.save(trainer.train_module.model.state_dict(), folder / 'params.pt')
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_weigh_the_global_batch_as_one_process_does(data, tmp_path):
    """OLMo-core's DDP on 2 gloo ranks, 4 instances each, against one process on the 8 of each batch."""
    mp.start_processes(_worker, args=(free_port(), data, tmp_path / 'two'), nprocs=2, join=True, start_method='spawn')
    one = _trainer(data, tmp_path / 'one', steps=3, micro=BATCH, warmup=1)
    one.fit()
    assert sorted(p.name for p in (tmp_path / 'two' / 'history').iterdir()) == ['rank0', 'rank1']
    key = [('step', 'ascending'), ('sample_id', 'ascending')]
    by_id = [load_history(tmp_path / name / 'history').sort_by(key).to_pylist() for name in ('two', 'one')]
    assert [(r['step'], r['sample_id']) for r in by_id[0]] == [(r['step'], r['sample_id']) for r in by_id[1]]
    torch.testing.assert_close(torch.tensor([r['weight'] for r in by_id[0]]), torch.tensor([r['weight'] for r in by_id[1]]))
    for step in range(3):
        rows = [r for r in by_id[0] if r['step'] == step]
        assert {r['rank'] for r in rows} == {0, 1} and len(rows) == BATCH
        assert sum(r['weight'] for r in rows) == pytest.approx(1.0, abs=1e-6)
        assert all(r['active'] == (step >= 1) for r in rows)
    two = torch.load(tmp_path / 'two' / 'params.pt', weights_only=True)
    for name, value in one.train_module.model.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5)
