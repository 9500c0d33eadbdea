"""Linear-regression toy study of loss-based sample reweighting (the paper's toy experiment).

Least-squares linear regression trained with mini-batch SGD, where each mini-batch's per-sample
squared errors are reweighted with :func:`reweigh.algorithms.compute_sample_weights` (the same
function the LLM trainer uses) and the update minimises ``sum_i w_i * l_i``. ``uniform`` is plain
mean-loss SGD.

Data (per seed): a ``dim``-dimensional linear teacher ``y = x . theta* + noise``. A fraction
``redundant_frac`` of the training set is near-copies (tiny jitter, noiseless labels) of a few
``prototypes``: they span only ``prototypes`` directions, are fitted within a few steps, and from then
on have near-zero loss while still filling most of every mini-batch. The rest are informative points
``x ~ N(0, I)`` with label noise ``noise``; the test set comes from the informative distribution, so
test loss measures recovery of ``theta*`` in all directions. Its floor is ``noise**2``; the target
test loss is ``target_factor * noise**2``.

Every strategy sees the same data and the same mini-batch sequence for a given seed (paired runs).

Example:
    python scripts/toy_regression.py --seeds 5 --out runs/toy
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from reweigh.algorithms import compute_sample_weights

STRATEGIES = ('uniform', 'linupper', 'quadratic', 'extremes')


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one toy study.

    Attributes:
        seeds (int): Number of seeds (0 .. seeds-1); each seed draws its own data and batch order.
        steps (int): SGD steps per run.
        batch (int): Mini-batch size.
        lr (float): SGD learning rate (constant).
        r (float): Softmax temperature of the weights.
        delta (float): Half-width of the loss normalisation interval.
        dim (int): Input dimension.
        n_train (int): Training-set size.
        redundant_frac (float): Fraction of the training set that is near-copies of the prototypes.
        prototypes (int): Number of distinct easy points that the redundant samples copy.
        jitter (float): Standard deviation of the per-copy perturbation of a prototype's inputs.
        noise (float): Label-noise standard deviation of the informative and test points.
        n_test (int): Test-set size.
        target_factor (float): Target test loss as a multiple of the noise floor ``noise**2``.
        strategies (tuple[str, ...]): Strategies to compare.
    """

    seeds: int = 5
    steps: int = 1500
    batch: int = 64
    lr: float = 0.02
    r: float = 1.0
    delta: float = 1.0
    dim: int = 32
    n_train: int = 4000
    redundant_frac: float = 0.85
    prototypes: int = 4
    jitter: float = 0.01
    noise: float = 0.1
    n_test: int = 4000
    target_factor: float = 2.0
    strategies: tuple[str, ...] = field(default=STRATEGIES)

    @property
    def noise_floor(self) -> float:
        """Expected test loss of the true teacher: the label-noise variance."""
        return self.noise**2

    @property
    def target(self) -> float:
        """Test loss that counts as reached."""
        return self.target_factor * self.noise_floor


@dataclass(frozen=True)
class ToyData:
    """One seed's data set (float64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    theta_star: torch.Tensor


@dataclass
class ToyResults:
    """Outcome of :func:`run_toy`.

    Attributes:
        config (ToyConfig): The settings used.
        curves (dict[str, torch.Tensor]): Per strategy, test loss ``[seeds, steps + 1]`` (entry 0 is
            before the first step).
        rows (list[dict]): One summary row per strategy (see :func:`summarize`).
        seconds (float): Wall time of the runs.
    """

    config: ToyConfig
    curves: dict[str, torch.Tensor]
    rows: list[dict]
    seconds: float


def make_data(cfg: ToyConfig, seed: int) -> ToyData:
    """Draw one seed's teacher, training set (redundant + informative) and test set."""
    g = torch.Generator().manual_seed(seed)
    theta_star = torch.randn(cfg.dim, generator=g, dtype=torch.float64)
    theta_star /= theta_star.norm()
    n_red = round(cfg.redundant_frac * cfg.n_train)
    n_inf = cfg.n_train - n_red
    protos = torch.randn(cfg.prototypes, cfg.dim, generator=g, dtype=torch.float64)
    which = torch.randint(cfg.prototypes, (n_red,), generator=g)
    x_red = protos[which] + cfg.jitter * torch.randn(n_red, cfg.dim, generator=g, dtype=torch.float64)
    y_red = x_red @ theta_star
    x_inf = torch.randn(n_inf, cfg.dim, generator=g, dtype=torch.float64)
    y_inf = x_inf @ theta_star + cfg.noise * torch.randn(n_inf, generator=g, dtype=torch.float64)
    x_test = torch.randn(cfg.n_test, cfg.dim, generator=g, dtype=torch.float64)
    y_test = x_test @ theta_star + cfg.noise * torch.randn(cfg.n_test, generator=g, dtype=torch.float64)
    return ToyData(torch.cat([x_red, x_inf]), torch.cat([y_red, y_inf]), x_test, y_test, theta_star)


def batch_indices(cfg: ToyConfig, seed: int) -> torch.Tensor:
    """Mini-batch indices ``[steps, batch]``: shuffled epochs without replacement, one order per seed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    per_epoch = cfg.n_train // cfg.batch
    epochs = math.ceil(cfg.steps / per_epoch)
    perms = [torch.randperm(cfg.n_train, generator=g)[: per_epoch * cfg.batch] for _ in range(epochs)]
    return torch.cat(perms).view(-1, cfg.batch)[: cfg.steps]


def eval_loss(theta: torch.Tensor, data: ToyData) -> float:
    """Mean squared error on the test set."""
    return float(((data.x_test @ theta - data.y_test) ** 2).mean())


def train(data: ToyData, batches: torch.Tensor, strategy: str, cfg: ToyConfig) -> torch.Tensor:
    """SGD from zero on the reweighted squared error; returns the test loss before and after each step."""
    theta = torch.zeros(data.x_train.shape[1], dtype=torch.float64, requires_grad=True)
    curve = [eval_loss(theta.detach(), data)]
    for idx in batches:
        losses = (data.x_train[idx] @ theta - data.y_train[idx]) ** 2
        weights = compute_sample_weights(losses, strategy, r=cfg.r, delta=cfg.delta).to(losses.dtype)
        (grad,) = torch.autograd.grad((weights * losses).sum(), theta)
        with torch.no_grad():
            theta -= cfg.lr * grad
        curve.append(eval_loss(theta.detach(), data))
    return torch.tensor(curve, dtype=torch.float64)


def steps_to_target(curve: torch.Tensor, target: float) -> int | None:
    """First step at which the test loss is at most ``target``, or ``None`` if never."""
    hits = torch.nonzero(curve <= target)
    return int(hits[0]) if len(hits) else None


def summarize(curves: torch.Tensor, target: float) -> dict:
    """Final test loss and steps-to-target statistics over seeds for one strategy's ``[seeds, steps+1]`` curves."""
    final = curves[:, -1]
    hits = [s for s in (steps_to_target(c, target) for c in curves) if s is not None]
    reached = torch.tensor(hits, dtype=torch.float64)
    return {
        'final_mean': float(final.mean()),
        'final_std': float(final.std()) if len(final) > 1 else 0.0,
        'steps_mean': float(reached.mean()) if hits else None,
        'steps_std': float(reached.std()) if len(hits) > 1 else (0.0 if hits else None),
        'reached': len(hits),
        'seeds': len(curves),
    }


def run_toy(**overrides) -> ToyResults:
    """Run every strategy on every seed and summarise.

    Args:
        **overrides: Fields of :class:`ToyConfig` to change (e.g. ``seeds=2, steps=200``).

    Returns:
        ToyResults: Curves per strategy and one summary row per strategy.
    """
    cfg = ToyConfig(**overrides)
    start = time.perf_counter()
    runs: dict[str, list[torch.Tensor]] = {s: [] for s in cfg.strategies}
    for seed in range(cfg.seeds):
        data, batches = make_data(cfg, seed), batch_indices(cfg, seed)
        for strategy in cfg.strategies:
            runs[strategy].append(train(data, batches, strategy, cfg))
    curves = {s: torch.stack(c) for s, c in runs.items()}
    rows = [{'strategy': s, **summarize(c, cfg.target)} for s, c in curves.items()]
    return ToyResults(cfg, curves, rows, time.perf_counter() - start)


def format_steps(row: dict) -> str:
    """Steps-to-target cell: ``mean ± std (k/n reached)`` or ``n/a (0/n reached)``."""
    count = f"({row['reached']}/{row['seeds']} reached)"
    if row['steps_mean'] is None:
        return f'n/a {count}'
    return f"{row['steps_mean']:.0f} ± {row['steps_std']:.0f} {count}"


def markdown_table(results: ToyResults) -> str:
    """The summary as a Markdown table."""
    cfg = results.config
    lines = [
        f'| strategy | final test loss (step {cfg.steps}) | steps to test loss ≤ {cfg.target:.4g} |',
        '|---|---|---|',
    ]
    for row in results.rows:
        final = f"{row['final_mean']:.5f} ± {row['final_std']:.5f}"
        lines.append(f"| {row['strategy']} | {final} | {format_steps(row)} |")
    return '\n'.join(lines)


def describe(cfg: ToyConfig) -> str:
    """One-paragraph description of the data setting."""
    n_red = round(cfg.redundant_frac * cfg.n_train)
    return (
        f'Linear teacher in d={cfg.dim}, |theta*|=1. Training set: {cfg.n_train} points, of which {n_red} '
        f'({cfg.redundant_frac:.0%}) are near-copies (jitter {cfg.jitter}) of {cfg.prototypes} prototype '
        f'points with noiseless labels (redundant, low loss once fitted) and {cfg.n_train - n_red} are '
        f'informative, x ~ N(0, I), label noise std {cfg.noise}. Test set: {cfg.n_test} informative points '
        f'(noise floor {cfg.noise_floor:.4g}; target = {cfg.target_factor:g} x floor = {cfg.target:.4g}). '
        f'Plain SGD from theta=0, lr {cfg.lr}, batch {cfg.batch}, {cfg.steps} steps, no warm-up, '
        f'r={cfg.r}, delta={cfg.delta}; mean ± std over seeds 0..{cfg.seeds - 1} (same data and batches '
        f'for every strategy).'
    )


def plot_curves(results: ToyResults, path: Path) -> None:
    """Test loss vs step: mean over seeds with a ±std band, log y, one line per strategy."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = torch.arange(results.config.steps + 1)
    for strategy, curves in results.curves.items():
        mean, std = curves.mean(0), curves.std(0) if len(curves) > 1 else torch.zeros_like(curves[0])
        ax.plot(steps, mean, label=strategy, lw=1.3)
        ax.fill_between(steps, (mean - std).clamp(min=1e-12), mean + std, alpha=0.2)
    ax.axhline(results.config.target, color='k', ls='--', lw=0.8, label='target')
    ax.axhline(results.config.noise_floor, color='gray', ls=':', lw=0.8, label='noise floor')
    ax.set(yscale='log', xlabel='SGD step', ylabel='test loss (MSE)',
           title=f'Linear-regression toy, mean ± std over {results.config.seeds} seeds')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: ToyResults, out: Path, command: str) -> None:
    """Write ``toy_test_loss.png``, ``toy_results.csv`` and ``toy_results.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out / 'toy_test_loss.png')
    with open(out / 'toy_results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(results.rows[0]))
        writer.writeheader()
        writer.writerows(results.rows)
    config = ', '.join(f'{k}={v}' for k, v in asdict(results.config).items())
    (out / 'toy_results.md').write_text(
        f'# Linear-regression toy\n\n{describe(results.config)}\n\n{markdown_table(results)}\n\n'
        f'Command: `{command}`\n\nConfig: {config}\n\nWall time: {results.seconds:.1f} s\n'
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; every ``ToyConfig`` field except ``strategies`` plus ``--out``."""
    defaults = ToyConfig()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for name, value in asdict(defaults).items():
        if name != 'strategies':
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument('--strategies', nargs='+', default=list(defaults.strategies))
    p.add_argument('--out', type=Path, default=Path('runs/toy'))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI: run the study, write the outputs, print the table and the wall time."""
    args = vars(parse_args(argv))
    out = args.pop('out')
    args['strategies'] = tuple(args['strategies'])
    results = run_toy(**args)
    command = shlex.join(['python', 'scripts/toy_regression.py', *(sys.argv[1:] if argv is None else argv)])
    write_outputs(results, out, command)
    print(describe(results.config))
    print(markdown_table(results))
    print(f'wall time: {results.seconds:.1f} s; outputs in {out}')


if __name__ == '__main__':
    main()
