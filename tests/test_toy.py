"""The linear-regression toy study (scripts/toy_regression.py): training, summary and outputs."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / 'scripts' / 'toy_regression.py'
_SPEC = importlib.util.spec_from_file_location('toy_regression', _PATH)
toy = importlib.util.module_from_spec(_SPEC)
sys.modules['toy_regression'] = toy  # dataclasses resolve their module by name
_SPEC.loader.exec_module(toy)

SMALL = dict(seeds=2, steps=200, batch=32, dim=8, prototypes=2, n_train=800, n_test=500, lr=0.05)


@pytest.fixture(scope='module')
def small():
    return toy.run_toy(**SMALL)


def test_every_strategy_learns(small):
    for strategy, curves in small.curves.items():
        assert curves.shape == (SMALL['seeds'], SMALL['steps'] + 1)
        start, end = curves[:, 0], curves[:, -1]
        assert torch.all(end < start / 20), strategy
        assert torch.all(end < 3 * small.config.noise_floor), strategy


def test_uniform_is_plain_mean_loss_sgd(small):
    cfg = small.config
    for seed in range(cfg.seeds):
        data, batches = toy.make_data(cfg, seed), toy.batch_indices(cfg, seed)
        theta = torch.zeros(cfg.dim, dtype=torch.float64, requires_grad=True)
        curve = [float(((data.x_test @ theta - data.y_test) ** 2).mean())]
        for idx in batches:
            loss = ((data.x_train[idx] @ theta - data.y_train[idx]) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                theta -= cfg.lr * theta.grad
            theta.grad = None
            curve.append(float(((data.x_test @ theta - data.y_test) ** 2).mean()))
        # batch 32: the float32 weight 1/32 is exact, so the runs agree bit for bit
        assert torch.equal(small.curves['uniform'][seed], torch.tensor(curve, dtype=torch.float64))


def test_reweighting_changes_the_trajectory(small):
    for strategy in ('linupper', 'quadratic', 'extremes'):
        assert not torch.allclose(small.curves[strategy], small.curves['uniform']), strategy


def test_linupper_reaches_target_before_uniform_in_default_setting():
    res = toy.run_toy(seeds=2, steps=600, strategies=('uniform', 'linupper'))
    for seed in range(2):
        uniform = toy.steps_to_target(res.curves['uniform'][seed], res.config.target)
        linupper = toy.steps_to_target(res.curves['linupper'][seed], res.config.target)
        assert linupper is not None and uniform is not None
        assert linupper < uniform


def test_deterministic_per_seed(small):
    again = toy.run_toy(**SMALL)
    for strategy in small.curves:
        assert torch.equal(small.curves[strategy], again.curves[strategy])
    assert not torch.equal(small.curves['uniform'][0], small.curves['uniform'][1])


def test_redundant_points_are_copies_of_few_prototypes():
    cfg = toy.ToyConfig(dim=12, n_train=800, prototypes=3, redundant_frac=0.75)
    data = toy.make_data(cfg, 0)
    redundant = data.x_train[:600]
    assert torch.linalg.matrix_rank(redundant, atol=1.0).item() == 3
    assert torch.allclose(redundant @ data.theta_star, data.y_train[:600])


def test_summary_matches_curves(small):
    target = small.config.target
    for row in small.rows:
        curves = small.curves[row['strategy']]
        hits = [toy.steps_to_target(c, target) for c in curves]
        assert row['final_mean'] == pytest.approx(float(curves[:, -1].mean()))
        assert row['reached'] == sum(h is not None for h in hits)
        assert row['steps_mean'] == pytest.approx(sum(hits) / len(hits))
        for c, h in zip(curves, hits):
            assert c[h] <= target and torch.all(c[:h] > target)


def test_unreached_target_is_reported():
    res = toy.run_toy(**{**SMALL, 'steps': 20, 'strategies': ('uniform',)})
    assert res.rows[0]['reached'] == 0 and res.rows[0]['steps_mean'] is None
    assert 'n/a (0/2 reached)' in toy.markdown_table(res)


def test_outputs_hold_returned_numbers(small, tmp_path):
    toy.write_outputs(small, tmp_path, 'python scripts/toy_regression.py --seeds 2')
    assert (tmp_path / 'toy_test_loss.png').stat().st_size > 1000
    with open(tmp_path / 'toy_results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['strategy'] for r in rows] == list(toy.STRATEGIES)
    for written, row in zip(rows, small.rows):
        assert float(written['final_mean']) == pytest.approx(row['final_mean'])
        assert float(written['steps_mean']) == pytest.approx(row['steps_mean'])
    md = (tmp_path / 'toy_results.md').read_text()
    assert 'python scripts/toy_regression.py --seeds 2' in md
    for row in small.rows:
        assert f"| {row['strategy']} | {row['final_mean']:.5f} ± {row['final_std']:.5f} | " in md
        assert f"{row['steps_mean']:.0f} ± {row['steps_std']:.0f} (2/2 reached)" in md


def test_cli(tmp_path, capsys):
    toy.main(['--seeds', '1', '--steps', '30', '--n-train', '400', '--strategies', 'uniform', 'linupper',
              '--out', str(tmp_path)])
    printed = capsys.readouterr().out
    assert '| uniform |' in printed and '| linupper |' in printed and 'wall time' in printed
    assert (tmp_path / 'toy_results.md').exists()
