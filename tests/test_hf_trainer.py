"""ReweighTrainer: reweigh's functional core in a Hugging Face ``transformers.Trainer`` (CPU, offline)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('accelerate', reason='transformers.Trainer needs accelerate')

import transformers  # noqa: E402
from hf_trainer_worker import LR, WORKER, tiny_gpt2, token_data, training_args  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from reweigh.algorithms import compute_sample_weights, per_sample_loss  # noqa: E402
from reweigh.analysis import analyze_history, load_history  # noqa: E402
from reweigh.integrations.transformers import ReweighTrainer  # noqa: E402

OFFLINE = {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'WANDB_DISABLED': 'true'}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _losses(model: torch.nn.Module, sample_ids: list[int]) -> torch.Tensor:
    """Per-sample losses of ``model`` on the samples with these ids, in this order (no gradient)."""
    ids = torch.tensor(token_data()['input_ids'])[[i - 100 for i in sample_ids]]
    with torch.no_grad():
        return per_sample_loss(model(input_ids=ids).logits, ids).loss


_ARGS = ('max_steps', 'gradient_accumulation_steps', 'per_device_train_batch_size')


def _train(trainer_cls, model, tmp_path, name, **kwargs) -> transformers.Trainer:
    """Train on :func:`token_data` with :func:`training_args` (those of ``kwargs`` in ``_ARGS``; the rest go to the trainer)."""
    args = {k: kwargs.pop(k) for k in _ARGS if k in kwargs}
    trainer = trainer_cls(model=model, args=training_args(tmp_path / name, **args), train_dataset=token_data(), **kwargs)
    trainer.train()
    return trainer


@pytest.mark.composer
def test_weights_and_update_equal_the_functional_core_and_the_composer_algorithm(tmp_path):
    from composer import Trainer as ComposerTrainer

    from reweigh.algorithms import LossReweighting
    from reweigh.models import ReweighCausalLM

    initial = tiny_gpt2()
    trainer = _train(
        ReweighTrainer, copy.deepcopy(initial), tmp_path, 'hf', max_steps=1, per_device_train_batch_size=8,
        strategy='quadratic', r=0.5, warmup=0, history_folder=tmp_path / 'history',
    )
    rows = load_history(tmp_path / 'history').to_pydict()
    order = rows['sample_id']
    assert len(order) == 8 and len(set(order)) == 8
    losses = _losses(initial, order)
    expected = compute_sample_weights(losses, 'quadratic', 0.5)
    used = trainer.last_microbatch
    assert used.active
    torch.testing.assert_close(used.losses, losses)
    torch.testing.assert_close(used.weights, expected)
    torch.testing.assert_close(torch.tensor(rows['weight']), expected)
    logged = trainer.state.log_history[0]
    assert logged['loss'] == pytest.approx(float((expected * losses).sum()), abs=1e-4)  # the loss is the weighted one
    assert logged['loss_reweighting/active'] == 1.0
    assert logged['loss_reweighting/mean_loss'] == pytest.approx(float(losses.mean()), rel=1e-5)

    # Composer's LossReweighting on the same samples in the same order, from the same weights
    ids = torch.tensor(token_data()['input_ids'])[[i - 100 for i in order]]
    algorithm = LossReweighting('quadratic', r=0.5, warmup=0)
    composer_model = ReweighCausalLM(copy.deepcopy(initial))
    ComposerTrainer(
        model=composer_model, train_dataloader=DataLoader([{'input_ids': x, 'labels': x} for x in ids], batch_size=8),
        max_duration='1ba', algorithms=[algorithm], optimizers=torch.optim.SGD(composer_model.parameters(), lr=LR),
        device='cpu', progress_bar=False, seed=17,
    ).fit()
    torch.testing.assert_close(algorithm.last_microbatch.weights, used.weights)
    composer_params = {k.removeprefix('model.'): v for k, v in _params(composer_model).items()}
    for k, v in _params(trainer.model).items():
        torch.testing.assert_close(v, composer_params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('accumulation', [1, 2])
def test_uniform_and_warmup_equal_plain_trainer(tmp_path, accumulation):
    base = tiny_gpt2()
    common = dict(max_steps=2, gradient_accumulation_steps=accumulation)
    plain = _params(_train(transformers.Trainer, copy.deepcopy(base), tmp_path, 'plain', **common).model)
    uniform = _params(_train(ReweighTrainer, copy.deepcopy(base), tmp_path, 'uniform', strategy='uniform', **common).model)
    warm = _params(_train(ReweighTrainer, copy.deepcopy(base), tmp_path, 'warm', warmup=2, **common).model)
    for k, v in plain.items():
        assert torch.equal(uniform[k], v), k
        assert torch.equal(warm[k], v), k


def test_reweighted_update_has_the_sample_mean_scale_with_accumulation(tmp_path):
    base = tiny_gpt2()
    common = dict(max_steps=2, gradient_accumulation_steps=2)
    # The reference: plain training on each microbatch's token mean (equal tokens per sample: the sample mean),
    # divided by the accumulation steps. (With loss kwargs the model would divide its token sum by the count of
    # unshifted labels, 16 per sample here rather than the 15 targets.)
    reference = copy.deepcopy(base)
    reference.accepts_loss_kwargs = False
    plain = _params(_train(transformers.Trainer, copy.deepcopy(reference), tmp_path, 'plain', **common).model)
    # nearly uniform weights through the reweighted path, with and without the model's loss kwargs
    soft = _params(_train(ReweighTrainer, copy.deepcopy(base), tmp_path, 'soft', r=1e6, warmup=0, **common).model)
    without_kwargs = copy.deepcopy(reference)  # training_step divides by the accumulation steps itself
    soft_without_kwargs = _params(_train(ReweighTrainer, without_kwargs, tmp_path, 'soft2', r=1e6, warmup=0, **common).model)
    sharp = _params(_train(ReweighTrainer, copy.deepcopy(base), tmp_path, 'sharp', r=0.2, warmup=1, **common).model)
    for k, v in plain.items():
        torch.testing.assert_close(soft[k], v, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(soft_without_kwargs[k], v, rtol=1e-4, atol=1e-6)
    assert not all(torch.allclose(sharp[k], v, rtol=1e-4, atol=1e-6) for k, v in plain.items())


def test_history_and_metrics_with_gradient_accumulation(tmp_path):
    trainer = _train(
        ReweighTrainer, tiny_gpt2(), tmp_path, 'run', max_steps=2, gradient_accumulation_steps=2, r=0.5, warmup=1,
        r_schedule=lambda step: 2.0, history_folder=tmp_path / 'history',
    )
    assert [p.name for p in (tmp_path / 'history').iterdir()] == ['rank0']
    table = load_history(tmp_path / 'history').sort_by([('step', 'ascending'), ('microbatch', 'ascending')])
    rows = table.to_pydict()
    assert rows['step'] == [0] * 8 + [1] * 8
    assert rows['microbatch'] == ([0] * 4 + [1] * 4) * 2
    assert sorted(rows['sample_id']) == list(range(100, 116))  # one epoch: every sample once, with its id
    assert all(d == (s - 100) % 3 for s, d in zip(rows['sample_id'], rows['domain']))
    assert rows['active'] == [False] * 8 + [True] * 8
    assert set(rows['r']) == {1.0} and rows['tokens'] == [15] * 16
    weights = torch.tensor(rows['weight']).view(4, 4)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(weights[:2], torch.full((2, 4), 0.25))
    torch.testing.assert_close(weights[3], compute_sample_weights(torch.tensor(rows['loss'][12:]), 'linupper', 1.0))
    assert analyze_history(tmp_path / 'history').summary.num_rows == 3  # one row per domain

    logs = [entry for entry in trainer.state.log_history if 'loss' in entry]
    assert [entry['loss_reweighting/active'] for entry in logs] == [0.0, 1.0]
    assert logs[0]['loss_reweighting/ess'] == pytest.approx(1.0)
    assert logs[1]['loss_reweighting/ess'] < 1.0 and logs[1]['loss_reweighting/r'] == 1.0
    assert logs[1]['loss_reweighting/weight_max'] == pytest.approx(float(weights[2:].max()))


def test_two_processes_weigh_the_global_batch(tmp_path):
    worker = Path(__file__).with_name('hf_trainer_worker.py')
    env = {**os.environ, **OFFLINE, 'OMP_NUM_THREADS': '1'}
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    assert sorted(p.name for p in (tmp_path / 'history').iterdir()) == ['rank0', 'rank1']
    rows = load_history(tmp_path / 'history').sort_by([('step', 'ascending'), ('rank', 'ascending')]).to_pydict()
    assert rows['step'] == [0] * 8 + [1] * 8 and rows['rank'] == ([0] * 4 + [1] * 4) * 2
    assert sorted(rows['sample_id'][:8] + rows['sample_id'][8:]) == list(range(100, 116))
    step1 = torch.load(tmp_path / 'params_step1.pt')
    for step, model in ((0, tiny_gpt2()), (1, _with_params(tiny_gpt2(), step1))):
        ids = rows['sample_id'][8 * step:8 * step + 8]
        weights = torch.tensor(rows['weight'][8 * step:8 * step + 8])
        losses = _losses(model, ids)  # one process, the same global batch, ordered by global rank
        torch.testing.assert_close(torch.tensor(rows['loss'][8 * step:8 * step + 8]), losses)
        torch.testing.assert_close(weights, compute_sample_weights(losses, WORKER['strategy'], WORKER['r']))
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0))

    # the update of the first step is sum_i w_i grad(l_i) over the global batch
    model = tiny_gpt2()
    ids = torch.tensor(token_data()['input_ids'])[[i - 100 for i in rows['sample_id'][:8]]]
    losses = per_sample_loss(model(input_ids=ids).logits, ids).loss
    (compute_sample_weights(losses, WORKER['strategy'], WORKER['r']) * losses).sum().backward()
    with torch.no_grad():
        for k, p in model.named_parameters():
            torch.testing.assert_close(step1[k], p - LR * p.grad, rtol=1e-5, atol=1e-6)

    # unequal microbatches (3 and 4 samples) are padded, and each process takes its slice by global rank
    parts = [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(2)]
    assert [p['weights'].shape[0] for p in parts] == [3, 4]
    all_losses = torch.cat([p['losses'] for p in parts])
    torch.testing.assert_close(torch.cat([p['weights'] for p in parts]), compute_sample_weights(all_losses, 'linupper', 0.7))
    for p in parts:
        torch.testing.assert_close(p['loss'], 2 * (p['weights'] * p['losses']).sum())


def _with_params(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    return model


@pytest.mark.parametrize(('kwargs', 'message'), [
    (dict(strategy='nope'), 'nope'),
    (dict(r=0.0), 'r must be a finite number > 0'),
    (dict(r=-1.0), 'r must be a finite number > 0'),
    (dict(delta=0), 'delta must be a finite number > 0'),
    (dict(warmup=-1), 'warmup must be a number of optimizer steps'),
    (dict(warmup=1.5), 'warmup must be a number of optimizer steps'),
    (dict(r_schedule=2.0), 'r_schedule must be a callable'),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReweighTrainer(**kwargs)


def test_reweighting_rejects_a_custom_loss_and_a_bad_r_schedule(tmp_path):
    with pytest.raises(ValueError, match='compute_loss_func'):
        ReweighTrainer(model=tiny_gpt2(), args=training_args(tmp_path), compute_loss_func=lambda *a, **k: 0.0)
    with pytest.raises(ValueError, match='r must stay > 0'):
        _train(ReweighTrainer, tiny_gpt2(), tmp_path, 'bad', warmup=0, r_schedule=lambda step: 0.0)


class _StrictGPT2(transformers.GPT2LMHeadModel):
    """A model whose forward takes no other keyword: an id column that reached it would be an error."""

    def forward(self, input_ids, attention_mask=None, labels=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def test_evaluation_and_prediction_take_datasets_with_id_columns(tmp_path):
    model = _StrictGPT2(tiny_gpt2().config)
    trainer = _train(ReweighTrainer, model, tmp_path, 'eval', max_steps=1, warmup=0)
    assert trainer.evaluate(token_data(8))['eval_loss'] > 0  # labelled: through compute_loss
    unlabelled = token_data(8).remove_columns('labels')  # no labels: straight to the model, without the ids
    logits = trainer.predict(unlabelled).predictions
    assert (logits[0] if isinstance(logits, tuple) else logits).shape == (8, 16, 64)


def test_a_classlabel_domain_column_names_the_domains_of_reweigh_analyze(tmp_path, capsys):
    from datasets import ClassLabel

    from reweigh.cli.main import main
    from reweigh.history.format import read_metadata

    data = token_data().cast_column('domain', ClassLabel(names=['code', 'web', 'books']))
    trainer = ReweighTrainer(model=tiny_gpt2(), args=training_args(tmp_path / 'run', max_steps=2), train_dataset=data,
                             strategy='linupper', warmup=0, history_folder=tmp_path / 'history')
    trainer.train()
    assert read_metadata(tmp_path / 'history')['domains'] == ['code', 'web', 'books']
    assert main(['analyze', str(tmp_path / 'history'), '--out', str(tmp_path / 'analysis')]) == 0
    worst = capsys.readouterr().out.split('most deprioritised domain: ')[1].split()[0]
    assert worst in ('code', 'web', 'books')
