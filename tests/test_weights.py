"""The weighting core: hand-computed values, invariances, non-finite losses and bad arguments."""

import math

import pytest
import torch

from reweigh.algorithms import (
    available_strategies,
    compute_sample_weights,
    normalize_losses,
    register_strategy,
    token_normalize_weights,
    weight_stats,
)
from reweigh.algorithms import strategies as strategies_module

LOSSES = [0.5, 2.0, 3.5, 1.25]  # l_min 0.5, l_max 3.5 -> h = (2l - 4) / 3


def _hand_weights(losses, f, r, delta):
    """Method steps 3-5 written out with Python floats, independently of the implementation."""
    lo, hi = min(losses), max(losses)
    h = [(2 * delta * x - delta * (lo + hi)) / max(hi - lo, 1e-6) for x in losses]
    fs = [f(v, delta) for v in h]
    g = [math.exp((v - max(fs)) / r) for v in fs]
    return [v / sum(g) for v in g]


HAND_STRATEGIES = {
    'uniform': lambda h, d: 0.0,
    'linupper': lambda h, d: min(h + d, d),
    'quadratic': lambda h, d: 1 - h * h / (d * d),
    'extremes': lambda h, d: abs(h),
    'upper': lambda h, d: 0.5 * h + 0.5 * d,
}


@pytest.mark.parametrize('strategy', sorted(HAND_STRATEGIES))
@pytest.mark.parametrize('r', [0.1, 1.0, 5.0])
@pytest.mark.parametrize('delta', [0.5, 1.0, 2.0])
def test_weights_match_hand_computation(strategy, r, delta):
    got = compute_sample_weights(torch.tensor(LOSSES), strategy, r, delta)
    want = _hand_weights(LOSSES, HAND_STRATEGIES[strategy], r, delta)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_linupper_worked_example():
    # h = [-1, 0, 1]; f = [0, 1, 1]; w = [e^-1, 1, 1] / (2 + e^-1)
    w = compute_sample_weights(torch.tensor([0.5, 2.0, 3.5]), 'linupper', 1.0)
    z = 2 + math.exp(-1)
    assert w.tolist() == pytest.approx([math.exp(-1) / z, 1 / z, 1 / z], rel=1e-6)


def test_strategy_shapes_order_samples_as_the_paper_describes():
    losses = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    lin = compute_sample_weights(losses, 'linupper')
    assert torch.all(lin[1:] >= lin[:-1])  # non-decreasing in the loss
    assert lin[2] == lin[3] == lin[4]  # capped from the median up
    quad = compute_sample_weights(losses, 'quadratic')
    assert quad.argmax() == 2 and quad[0] == pytest.approx(float(quad[4]))
    ext = compute_sample_weights(losses, 'extremes')
    assert ext.argmin() == 2 and ext[0] == pytest.approx(float(ext[4]))


def test_normalize_losses_maps_onto_interval():
    h = normalize_losses(torch.tensor([3.0, 5.0, 4.0]), delta=2.0)
    assert h.tolist() == pytest.approx([-2.0, 2.0, 0.0])


@pytest.mark.parametrize('strategy', sorted(HAND_STRATEGIES))
def test_shift_and_scale_of_losses_leave_weights_unchanged(strategy):
    losses = torch.tensor([2.1, 3.7, 0.4, 5.5, 2.9])
    base = compute_sample_weights(losses, strategy, 0.7)
    torch.testing.assert_close(compute_sample_weights(losses + 11.0, strategy, 0.7), base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compute_sample_weights(losses * 3.0, strategy, 0.7), base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('strategy', sorted(HAND_STRATEGIES))
def test_equal_losses_give_uniform_weights(strategy):
    w = compute_sample_weights(torch.full((7,), 2.345), strategy, 0.3)
    assert torch.equal(w, torch.full((7,), 1 / 7))


@pytest.mark.parametrize('strategy', ['linupper', 'quadratic', 'extremes', 'upper'])
def test_large_r_tends_to_uniform_and_small_r_concentrates(strategy):
    losses = torch.tensor([0.3, 1.9, 2.5, 4.0, 0.9])
    spread = [float(compute_sample_weights(losses, strategy, r).max() - 0.2) for r in (0.05, 1.0, 1e3, 1e6)]
    assert spread[0] > spread[1] > spread[2] > spread[3] >= 0
    assert spread[3] < 1e-6


def test_weights_keep_device_and_are_float32_for_half_inputs():
    w = compute_sample_weights(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
    assert w.dtype == torch.float32 and w.device == torch.device('cpu')


def test_weights_carry_no_gradient():
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert not compute_sample_weights(losses).requires_grad


def test_nonfinite_losses_get_zero_weight_and_do_not_poison_the_rest():
    losses = torch.tensor([0.5, float('nan'), 2.0, float('inf'), 3.5, -float('inf')])
    w = compute_sample_weights(losses, 'linupper')
    clean = compute_sample_weights(torch.tensor([0.5, 2.0, 3.5]), 'linupper')
    assert torch.all(torch.isfinite(w))
    assert w[[1, 3, 5]].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(w[[0, 2, 4]], clean)


def test_all_nonfinite_losses_give_uniform_weights():
    w = compute_sample_weights(torch.tensor([float('nan'), float('inf')]), 'linupper')
    assert w.tolist() == [0.5, 0.5]


def test_single_sample_gets_all_the_weight():
    assert compute_sample_weights(torch.tensor([4.2]), 'extremes').tolist() == [1.0]


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'strategy': 'linear'}, r"Unknown strategy 'linear'; available strategies: .*linupper"),
        ({'r': 0.0}, r'r must be a finite number > 0, got 0.0'),
        ({'r': -1}, r'r must be a finite number > 0, got -1'),
        ({'r': float('nan')}, r'r must be a finite number > 0, got nan'),
        ({'delta': 0}, r'delta must be a finite number > 0, got 0'),
        ({'delta': '1'}, r"delta must be a finite number > 0, got '1'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_sample_weights(torch.tensor([1.0, 2.0]), **kwargs)


@pytest.mark.parametrize(
    ('losses', 'match'),
    [
        (torch.tensor([]), r'non-empty 1-D tensor, got \(0,\)'),
        (torch.ones(2, 2), r'non-empty 1-D tensor, got \(2, 2\)'),
        ([1.0, 2.0], r'non-empty 1-D tensor, got list'),
        (torch.tensor([1, 2]), r'floating-point tensor, got dtype torch.int64'),
    ],
)
def test_bad_losses_raise_value_error(losses, match):
    with pytest.raises(ValueError, match=match):
        compute_sample_weights(losses)


def test_registry_lists_builtins_and_accepts_user_strategies(monkeypatch):
    monkeypatch.setattr(strategies_module, '_REGISTRY', dict(strategies_module._REGISTRY))
    assert {'uniform', 'linupper', 'quadratic', 'extremes', 'upper'} <= set(available_strategies())

    @register_strategy('lowest_first')
    def lowest_first(h, delta):
        return -h

    w = compute_sample_weights(torch.tensor([1.0, 2.0, 3.0]), 'lowest_first', 1.0)
    assert w.argmax() == 0 and 'lowest_first' in available_strategies()
    with pytest.raises(ValueError, match="already registered"):
        register_strategy('lowest_first', lowest_first)
    register_strategy('lowest_first', lambda h, d: h, overwrite=True)
    assert compute_sample_weights(torch.tensor([1.0, 2.0, 3.0]), 'lowest_first').argmax() == 2
    with pytest.raises(ValueError, match='non-empty string'):
        register_strategy('', lowest_first)
    with pytest.raises(ValueError, match='must be callable'):
        register_strategy('not_callable', 3)


def test_token_normalize_turns_uniform_weights_into_token_shares():
    w = token_normalize_weights(torch.full((3,), 1 / 3), torch.tensor([1, 2, 5]))
    assert w.tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8])
    assert token_normalize_weights(torch.tensor([0.5, 0.5]), torch.tensor([0, 0])).tolist() == [0.5, 0.5]


def test_weight_stats():
    uniform = weight_stats(torch.full((4,), 0.25), torch.ones(4))
    assert float(uniform.entropy) == pytest.approx(math.log(4))
    assert float(uniform.ess) == pytest.approx(1.0)
    w = torch.tensor([0.5, 0.5, 0.0, 0.0])
    losses = torch.tensor([1.0, 2.0, float('nan'), 0.0])
    valid = torch.tensor([True, True, True, False])  # last slot is padding
    s = weight_stats(w, losses, valid)
    assert float(s.ess) == pytest.approx(2.0 / 3.0)  # 1/sum w^2 = 2, over 3 real samples
    assert float(s.entropy) == pytest.approx(math.log(2))
    assert float(s.min) == 0.5 and float(s.max) == 0.5  # min over finite real samples
    assert float(s.nonfinite) == 1.0
    assert float(s.mean_loss) == 1.5  # the finite losses of real samples only
