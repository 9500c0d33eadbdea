"""Host time of one call of the reweighting step after the all-gather: eager, through ``torch.compile``, and as
``Fused`` calls it (the generated function, directly); and of a whole ``Reweighter`` step with its report.

Each call is timed twice in a row: "cold" right after streaming 64 MiB through the caches (as a forward and backward
pass does to the step that follows it), then "hot". Medians of ``--calls`` pairs, in microseconds, from one run; a
batch of 8 samples on the CPU, one process. The first calls (compiling) are not timed.

Example:
    python scripts/bench_fused_call.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.algorithms.step import _FUSED_WEIGH, _temperature, weigh_global_batch
from reweigh.algorithms.strategies import get_strategy


def timed(fn: Callable[[], object], calls: int, evict: torch.Tensor) -> tuple[float, float]:
    """Median cold and hot wall time of ``fn`` in microseconds."""
    cold, hot = [], []
    for _ in range(calls):
        evict.mul_(1.0)
        start = time.perf_counter()
        fn()
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn()
        hot.append(time.perf_counter() - start)
    return statistics.median(cold) * 1e6, statistics.median(hot) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--calls', type=int, default=300)
    args = parser.parse_args()
    losses, tokens = torch.rand(8) + 1, torch.full((8,), 127)
    settings = dict(start=0, strategy=get_strategy('linupper'), delta=1.0, token_normalize=False, active=True, world=1)
    r = _temperature(1.0, losses.device)
    compiled = torch.compile(weigh_global_batch)
    eager_step, fused_step = Reweighter('linupper', warmup=0, fused=False), Reweighter('linupper', warmup=0, fused=True)
    leaf = torch.rand(8, requires_grad=True)

    def step(reweighter: Reweighter) -> Callable[[], object]:
        def run() -> object:
            out = reweighter.step(leaf * 1.0, tokens, Progress(step=1))
            reweighter.report()
            return out
        return run

    arms = {
        'weigh_global_batch, eager': lambda: weigh_global_batch(losses, tokens, losses, 1.0, **settings),
        'weigh_global_batch, torch.compile': lambda: compiled(losses, tokens, losses, r, **settings),
        'weigh_global_batch, Fused (direct call)': lambda: _FUSED_WEIGH(losses, tokens, losses, r, **settings),
        'Reweighter.step + report, eager': step(eager_step),
        'Reweighter.step + report, fused': step(fused_step),
    }
    for fn in arms.values():  # compile, and warm up
        for _ in range(3):
            fn()
    evict = torch.zeros(16 * 2**20)  # 64 MiB of float32
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch 8, {args.calls} call pairs per arm')
    print('| what | cold (us) | hot (us) |')
    print('|---|---|---|')
    for name, fn in arms.items():
        cold, hot = timed(fn, args.calls, evict)
        print(f'| {name} | {cold:.1f} | {hot:.1f} |')


if __name__ == '__main__':
    main()
