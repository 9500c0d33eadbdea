"""The framework-free reweighting step (reweigh.algorithms.step): what every trainer adapter calls."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from extras_support import blocking

from reweigh.algorithms import compute_sample_weights
from reweigh.algorithms.constants import DEFAULT_DELTA, DEFAULT_R, DEFAULT_STRATEGY, DEFAULT_TOKEN_NORMALIZE, DEFAULT_WARMUP_STEPS
from reweigh.algorithms.step import WeightMetrics, reweight_microbatch, scheduled_r

FRAMEWORKS = ('composer', 'streaming', 'transformers', 'llmfoundry', 'accelerate', 'datasets')


def test_the_core_imports_and_computes_without_composer_streaming_or_transformers():
    """A plain PyTorch loop can use the core where none of the trainers' stacks is installed: their imports are
    blocked in a fresh interpreter, and the weights, the loss and its gradient still come out; the Composer
    adapter alone says what is missing."""
    code = blocking(FRAMEWORKS, f"""
        import torch
        import reweigh.algorithms as core
        from reweigh.algorithms.step import WeightMetrics, reweight_microbatch

        losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        out = reweight_microbatch(losses, torch.tensor([5, 5, 5]), strategy='linupper', r=1.0, delta=1.0, active=True)
        out.loss.backward()
        assert torch.allclose(losses.grad, core.compute_sample_weights(losses.detach()))
        metrics = WeightMetrics()
        metrics.add(out.stats, out.record.r, out.record.active)
        assert metrics.report() is not None

        import tempfile
        from reweigh.history.format import encode_metadata, list_parts
        from reweigh.history.recorder import HistoryRecorder
        reweighter, root = core.Reweighter('quadratic', warmup='8tok'), tempfile.mkdtemp()
        recorder = HistoryRecorder(root, 0, encode_metadata(reweighter.settings(), run_name='loop', world_size=1))
        for step in range(2):
            done = reweighter.step(losses, torch.tensor([2, 2, 2]), core.Progress(step, tokens=8 * step),
                                   sample_id=torch.arange(3))
            recorder.record(step, done.record)
        recorder.close()
        assert done.record.active and len(list_parts(root, recursive=True)) == 1
        try:
            core.LossReweighting
        except ModuleNotFoundError as e:
            print('adapter:', e.name)
        print('loaded:', sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['adapter: composer', 'loaded: []']


def test_importing_the_package_or_its_defaults_loads_no_torch():
    """`reweigh weights --help` shows the defaults from the core without loading torch."""
    code = ('import sys\nimport reweigh.algorithms, reweigh.algorithms.constants\n'
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == 'False'


def test_an_active_step_backpropagates_the_weighted_loss_with_constant_weights():
    losses = torch.tensor([0.5, 2.0, 3.5, 1.0], requires_grad=True)
    tokens = torch.tensor([10, 20, 30, 40])
    out = reweight_microbatch(losses, tokens, strategy='quadratic', r=0.5, delta=1.0, active=True)
    expected = compute_sample_weights(losses.detach(), 'quadratic', 0.5, 1.0)
    assert torch.equal(out.record.weights, expected)
    assert torch.allclose(out.loss, (expected * losses.detach()).sum())
    out.loss.backward()
    assert torch.allclose(losses.grad, expected)  # d/dl_i of sum_j w_j l_j with w held constant
    assert out.record.active and out.record.r == 0.5
    assert torch.equal(out.record.tokens, tokens) and not out.record.losses.requires_grad


def test_an_inactive_step_leaves_the_loss_to_the_trainer_and_records_uniform_weights():
    losses = torch.tensor([0.5, 2.0, 3.5, 1.0])
    out = reweight_microbatch(losses, torch.ones(4), strategy='linupper', r=1.0, delta=1.0, active=False)
    assert out.loss is None
    assert torch.equal(out.record.weights, torch.full((4,), 0.25))
    assert not out.record.active


def test_token_normalisation_folds_the_token_counts_into_the_weights():
    losses = torch.tensor([1.0, 1.0, 1.0])
    tokens = torch.tensor([1, 1, 2])
    out = reweight_microbatch(losses, tokens, strategy='uniform', r=1.0, delta=1.0, active=False, token_normalize=True)
    assert torch.allclose(out.record.weights, torch.tensor([0.25, 0.25, 0.5]))


def test_weight_metrics_average_take_extremes_and_sum_over_their_window():
    metrics = WeightMetrics()
    steps = [reweight_microbatch(torch.tensor(losses), torch.ones(3), strategy='linupper', r=r, delta=1.0, active=active)
             for losses, r, active in (([1.0, 2.0, 3.0], 1.0, True), ([1.0, float('nan'), 1.0], 2.0, False))]
    for out in steps:
        metrics.add(out.stats, out.record.r, out.record.active)
    tensors, scalars = metrics.report()
    stats = [out.stats for out in steps]
    assert tensors['loss_reweighting/ess'] == pytest.approx((stats[0].ess + stats[1].ess).item() / 2)
    assert tensors['loss_reweighting/weight_entropy'] == pytest.approx((stats[0].entropy + stats[1].entropy).item() / 2)
    assert tensors['loss_reweighting/weight_min'] == pytest.approx(min(s.min.item() for s in stats))
    assert tensors['loss_reweighting/weight_max'] == pytest.approx(max(s.max.item() for s in stats))
    assert tensors['loss_reweighting/nonfinite_losses'] == 1
    assert tensors['loss_reweighting/mean_loss'] == pytest.approx((2.0 + 1.0) / 2)
    assert scalars == {'loss_reweighting/r': 1.5, 'loss_reweighting/active': 0.5}
    assert metrics.report() is None  # the window starts anew


def test_weight_metrics_report_an_unchanged_temperature_exactly():
    metrics = WeightMetrics()
    out = reweight_microbatch(torch.tensor([1.0, 2.0]), torch.ones(2), strategy='linupper', r=0.1, delta=1.0, active=True)
    for _ in range(3):
        metrics.add(out.stats, 0.1, True)
    assert metrics.report()[1]['loss_reweighting/r'] == 0.1  # (0.1 + 0.1 + 0.1) / 3 would not be


def test_a_schedule_that_reaches_zero_is_an_error_naming_when():
    assert scheduled_r(2.0, None, 'step 3') == 2.0
    with pytest.raises(ValueError, match=r'r_schedule gave r = 0.0 at step 3; r must stay > 0'):
        scheduled_r(2.0, 0.0, 'step 3')


def test_every_adapter_and_config_takes_its_defaults_from_the_core():
    pytest.importorskip('composer')
    from reweigh.algorithms import LossReweighting
    from reweigh.train.schema import LossReweightingConfig

    composer = LossReweighting()
    assert (composer.strategy, composer.r, composer.delta, composer.token_normalize) == (
        DEFAULT_STRATEGY, DEFAULT_R, DEFAULT_DELTA, DEFAULT_TOKEN_NORMALIZE)
    assert (composer.warmup.value, composer.warmup.unit.value) == (DEFAULT_WARMUP_STEPS, 'ba')
    config = LossReweightingConfig()
    assert (config.strategy, config.r, config.delta, config.warmup, config.token_normalize) == (
        DEFAULT_STRATEGY, DEFAULT_R, DEFAULT_DELTA, f'{DEFAULT_WARMUP_STEPS}ba', DEFAULT_TOKEN_NORMALIZE)
    pytest.importorskip('transformers')
    from reweigh.integrations.transformers import ReweighTrainer

    hf = inspect.signature(ReweighTrainer.__init__).parameters
    assert (hf['strategy'].default, hf['r'].default, hf['delta'].default, hf['warmup'].default,
            hf['token_normalize'].default) == (DEFAULT_STRATEGY, DEFAULT_R, DEFAULT_DELTA, DEFAULT_WARMUP_STEPS,
                                               DEFAULT_TOKEN_NORMALIZE)


def test_the_reweighter_owns_warmup_schedule_metrics_and_checkpointed_state():
    from reweigh.algorithms.reweighter import Progress, Reweighter, parse_warmup_string

    reweighter = Reweighter('linupper', r=2.0, warmup='0.5dur', r_schedule=lambda clock: 1 + clock.step)
    assert [reweighter.is_active(Progress(3, fraction=f)) for f in (None, 0.49, 0.5)] == [False, False, True]
    assert reweighter.current_r(Progress(3)) == 8.0 and reweighter.current_r(None) == 2.0
    losses = torch.tensor([0.5, 1.0, 4.0])
    out = reweighter.step(losses, torch.ones(3), Progress(1, fraction=0.9))
    torch.testing.assert_close(out.record.weights, compute_sample_weights(losses, 'linupper', 4.0))
    tensors, scalars = reweighter.report()
    assert scalars == {'loss_reweighting/r': 4.0, 'loss_reweighting/active': 1.0} and reweighter.report() is None
    reweighter.step(torch.tensor([float('nan'), 1.0]), torch.ones(2), Progress(1, fraction=0.9))
    reweighter.report()
    saved = reweighter.state_dict()
    assert saved == {'strategy': 'linupper', 'r': 2.0, 'delta': 1.0, 'warmup': '0.5dur', 'token_normalize': False,
                     'nonfinite_total': 1}
    resumed = Reweighter('linupper', r=2.0, warmup='0.5dur')
    resumed.load_state_dict(saved)
    assert resumed.nonfinite_total == 1
    with pytest.warns(UserWarning, match=r'Reweighter settings differ from the checkpoint; .* r: 2.0 -> 3.0'):
        Reweighter('linupper', r=3.0, warmup='0.5dur').load_state_dict(saved)
    with pytest.raises(ValueError, match='does not report tokens'):
        Reweighter(warmup='10tok').is_active(Progress(0))
    for bad in ('soon', '1.5ba', -1, '10 epochs'):
        with pytest.raises(ValueError, match='warmup'):
            parse_warmup_string(bad)
    assert not Reweighter('uniform', warmup=0).is_active(Progress(10))
