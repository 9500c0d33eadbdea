"""LossReweighting inside a real Composer Trainer (tiny GPT-2 on CPU)."""

import math

import pytest
import torch
from composer.core import Callback, Event, State
from composer.loggers import InMemoryLogger, Logger
from composer.models import HuggingFaceModel
from composer.optim import LinearScheduler
from lm_helpers import make_trainer, params, tiny_gpt2

from reweigh.algorithms import LossReweighting, compute_sample_weights, per_sample_loss, register_strategy
from reweigh.algorithms import strategies as strategies_module
from reweigh.models import ReweighCausalLM


class Capture(Callback):
    """Records per-step loss values, per-sample losses and gradients."""

    def __init__(self) -> None:
        self.losses, self.per_sample, self.grads = [], [], []

    def after_loss(self, state: State, logger: Logger) -> None:
        self.losses.append(state.loss.detach().clone())
        self.per_sample.append(state.outputs['per_sample_loss'].loss.detach().clone())

    def after_train_batch(self, state: State, logger: Logger) -> None:
        self.grads.append({k: p.grad.clone() for k, p in state.model.named_parameters() if p.grad is not None})


@pytest.fixture
def flat_strategy(monkeypatch):
    """A strategy that gives uniform weights but goes through the full reweighting path."""
    monkeypatch.setattr(strategies_module, '_REGISTRY', dict(strategies_module._REGISTRY))
    register_strategy('flat', lambda h, delta: torch.zeros_like(h))
    return 'flat'


def test_uniform_reproduces_plain_training_bit_for_bit():
    plain = make_trainer(tiny_gpt2(dropout=0.1))
    plain.fit()
    uniform = make_trainer(tiny_gpt2(dropout=0.1), [LossReweighting('uniform', warmup=0)])
    uniform.fit()
    warm = make_trainer(tiny_gpt2(dropout=0.1), [LossReweighting('linupper', warmup='1.0dur')])
    warm.fit()
    reference = params(plain)
    for other in (uniform, warm):
        got = params(other)
        assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_uniform_weights_through_the_reweighting_path_match_plain_training(flat_strategy):
    plain = make_trainer(tiny_gpt2())
    plain.fit()
    flat = make_trainer(tiny_gpt2(), [LossReweighting(flat_strategy, warmup=0)])
    flat.fit()
    reference, got = params(plain), params(flat)
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-5, atol=1e-6)


def test_linupper_replaces_the_loss_with_the_weighted_loss_after_warmup():
    capture = Capture()
    trainer = make_trainer(tiny_gpt2(), [LossReweighting('linupper', r=0.5, warmup='2ba')], callbacks=[capture])
    trainer.fit()
    for step, (loss, per_sample) in enumerate(zip(capture.losses, capture.per_sample)):
        if step < 2:  # warm-up: the model's own (token-mean) loss
            torch.testing.assert_close(loss, per_sample.mean())
        else:
            weights = compute_sample_weights(per_sample, 'linupper', 0.5)
            torch.testing.assert_close(loss, (weights * per_sample).sum())
            # weights grow with the loss, so the weighted loss exceeds the plain mean
            assert float(loss) > float(per_sample.mean())
    uniform = make_trainer(tiny_gpt2(), [LossReweighting('uniform')])
    uniform.fit()
    assert any(not torch.equal(a, b) for a, b in zip(params(trainer).values(), params(uniform).values()))


def test_microbatching_gives_the_gradients_of_the_full_batch(flat_strategy):
    grads = []
    for microbatch in (8, 2):
        capture = Capture()
        trainer = make_trainer(
            tiny_gpt2(), [LossReweighting(flat_strategy, warmup=0)], callbacks=[capture],
            device_train_microbatch_size=microbatch, max_duration='2ba',
        )
        trainer.fit()
        grads.append(capture.grads)
    full, micro = grads
    assert len(full) == len(micro) == 2
    for g_full, g_micro in zip(full, micro):
        for k in g_full:
            torch.testing.assert_close(g_micro[k], g_full[k], rtol=1e-4, atol=1e-6)


def test_microbatches_are_weighted_separately():
    capture = Capture()
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', warmup=0)], callbacks=[capture],
        device_train_microbatch_size=4, max_duration='1ba',
    )
    trainer.fit()
    assert len(capture.losses) == 2
    for loss, per_sample in zip(capture.losses, capture.per_sample):
        assert per_sample.shape == (4,)
        torch.testing.assert_close(loss, (compute_sample_weights(per_sample) * per_sample).sum())


def test_generic_path_matches_fast_path():
    results = []
    for fast in (True, False):
        model = tiny_gpt2()
        if not fast:
            model = HuggingFaceModel(model.model, shift_labels=True)  # HF computes its own loss from labels
        trainer = make_trainer(model, [LossReweighting('linupper', warmup='1ba')])
        trainer.fit()
        results.append(params(trainer))
    fast_params, generic_params = results
    for k in fast_params:
        torch.testing.assert_close(generic_params[k], fast_params[k], rtol=1e-4, atol=1e-6)


def test_metrics_are_logged_every_batch():
    logger = InMemoryLogger()
    schedule = LinearScheduler(alpha_i=4.0, alpha_f=1.0, t_max='4ba')
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', r=0.5, warmup='2ba', r_schedule=schedule)], loggers=[logger],
    )
    trainer.fit()

    r = [v for _, v in logger.data['loss_reweighting/r']]
    assert r == pytest.approx([0.5 * (4 - 3 * t / 4) for t in range(4)])
    assert [v for _, v in logger.data['loss_reweighting/active']] == [0.0, 0.0, 1.0, 1.0]
    ess = [v for _, v in logger.data['loss_reweighting/ess']]
    entropy = [v for _, v in logger.data['loss_reweighting/weight_entropy']]
    assert ess[:2] == pytest.approx([1.0, 1.0]) and all(e < 1.0 for e in ess[2:])
    assert entropy[:2] == pytest.approx([math.log(8)] * 2) and all(e < math.log(8) for e in entropy[2:])
    w_min = [v for _, v in logger.data['loss_reweighting/weight_min']]
    w_max = [v for _, v in logger.data['loss_reweighting/weight_max']]
    assert all(lo <= 1 / 8 <= hi for lo, hi in zip(w_min, w_max))
    assert [v for _, v in logger.data['loss_reweighting/nonfinite_losses']] == [0.0] * 4
    assert all(len(logger.data[f'loss_reweighting/{n}']) == 4 for n in ('weight_min', 'weight_max', 'ess'))


class NaNFirstSample(ReweighCausalLM):
    """Makes the first sample of every batch produce a NaN loss, as a corrupt sample would."""

    def loss(self, outputs, batch):
        plain = super().loss(outputs, batch)
        ps = outputs['per_sample_loss']
        bad = torch.arange(ps.loss.shape[0]) == 0
        outputs['per_sample_loss'] = ps._replace(loss=torch.where(bad, math.nan, ps.loss))
        return plain


def test_nonfinite_sample_is_dropped_counted_and_training_stays_finite():
    logger = InMemoryLogger()
    base = tiny_gpt2()
    model = NaNFirstSample(base.model)
    algorithm = LossReweighting('linupper', warmup=0)
    trainer = make_trainer(model, [algorithm], loggers=[logger])
    trainer.fit()
    assert [v for _, v in logger.data['loss_reweighting/nonfinite_losses']] == [1.0] * 4
    assert algorithm.nonfinite_total == 4
    assert all(math.isfinite(v) for _, v in logger.data['loss/train/total'])
    assert all(torch.isfinite(p).all() for p in params(trainer).values())


def test_checkpoint_resume_continues_with_the_same_schedule(tmp_path):
    algorithm_kwargs = dict(strategy='linupper', r=0.5, warmup='2ba')
    straight = make_trainer(tiny_gpt2(), [LossReweighting(**algorithm_kwargs)], max_duration='4ba')
    straight.fit()

    first = make_trainer(
        tiny_gpt2(), [LossReweighting(**algorithm_kwargs)], max_duration='4ba',
        save_folder=str(tmp_path), save_interval='1ba', save_filename='ep{epoch}-ba{batch}.pt',
    )
    first.fit(duration='1ba')  # stop inside the warm-up, so the resume must switch reweighting on
    resumed_algorithm = LossReweighting(**algorithm_kwargs)
    resumed = make_trainer(
        tiny_gpt2(seed=99), [resumed_algorithm], max_duration='4ba', load_path=str(tmp_path / 'ep0-ba1.pt'),
    )
    assert resumed.state.timestamp.batch.value == 1
    resumed.fit()
    reference, got = params(straight), params(resumed)
    for k in reference:
        torch.testing.assert_close(got[k], reference[k])


def test_load_state_dict_restores_counters_and_warns_on_changed_settings():
    saved = LossReweighting('linupper', r=1.0, warmup='10ba').state_dict()
    saved['nonfinite_total'] = 7
    algorithm = LossReweighting('quadratic', r=1.0, warmup='10ba')
    with pytest.warns(UserWarning, match="strategy: 'linupper' -> 'quadratic'"):
        algorithm.load_state_dict(saved)
    assert algorithm.nonfinite_total == 7


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'strategy': 'nope'}, "Unknown strategy 'nope'"),
        ({'r': -1.0}, 'r must be a finite number > 0, got -1.0'),
        ({'delta': 0.0}, 'delta must be a finite number > 0, got 0.0'),
        ({'warmup': 'soon'}, "warmup must be a Composer time string.*got 'soon'"),
        ({'warmup': '-5ba'}, 'warmup must be >= 0'),
        ({'warmup': '5iter'}, "warmup unit 'iter' not allowed here"),
        ({'warmup': 1.5}, 'warmup must be a Composer time string.*got 1.5'),
        ({'r_schedule': 3}, 'r_schedule must be callable'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossReweighting(**kwargs)


def test_schedule_that_reaches_zero_is_reported():
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', warmup=0, r_schedule=lambda state: 0.0)], max_duration='1ba',
    )
    with pytest.raises(ValueError, match='r_schedule gave r = 0.0'):
        trainer.fit()


def test_model_without_logits_or_labels_gets_a_clear_error():
    class NoLabels(ReweighCausalLM):

        def forward(self, batch):
            return super().forward(batch)['logits']  # a bare tensor, no per-sample losses

        def loss(self, outputs, batch):
            return per_sample_loss(outputs, batch['labels']).loss.mean()

    model = NoLabels(tiny_gpt2().model, loss_impl='materialized')
    trainer = make_trainer(model, [LossReweighting(warmup=0)], max_duration='1ba')
    trainer.fit()  # logits tensor + labels in the batch: the generic path works
    algorithm = LossReweighting(warmup=0)
    state = trainer.state
    state.outputs = {'hidden': torch.zeros(1)}
    with pytest.raises(ValueError, match='needs per-sample losses'):
        algorithm.apply(Event.AFTER_LOSS, state, trainer.logger)
