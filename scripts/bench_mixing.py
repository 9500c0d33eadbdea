"""Measure the step time of online mixing's stream against the plain stream, in one process.

Arms (same model, optimizer and LossReweighting; the data is a prepared reweigh dataset):

* ``stream``: the plain training stream (``build_train_dataloader``: Streaming's iteration, its shuffle).
* ``mixed``: the online-mixing stream (``build_mixing_dataloader``: the sampler's plan, reads by index) with the
  ``OnlineMixing`` callback and the ``weights`` policy updating every ``--interval`` steps.

The arms run in interleaved blocks of ``--steps`` steps, in a freshly shuffled order each round (seeded). A step's
time is the wall time from one ``BATCH_END`` to the next, so it includes fetching the batch (where the two streams
differ) and, on update steps, the policy's update; the first step of each block is not timed. The median shows the
typical step; the mean includes the update steps (one in ``--interval``).

Example:
    python scripts/bench_mixing.py --data data/default --steps 25 --rounds 8
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
from composer import Trainer
from composer.core import Callback, State
from composer.loggers import Logger

from reweigh.algorithms import LossReweighting
from reweigh.callbacks import OnlineMixing
from reweigh.models import build_causal_lm
from reweigh.pipeline import (
    ReweighStreamingDataset,
    SampleLookup,
    build_mixing_dataloader,
    build_train_dataloader,
    make_policy,
    natural_mix,
)


class StepClock(Callback):
    """Wall time between consecutive ``BATCH_END`` events of one ``fit`` call."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        self._last = None  # the first step of a block includes fit()'s own start: not timed

    def batch_end(self, state: State, logger: Logger) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def build_arm(arm: str, args: argparse.Namespace, vocab: int) -> tuple[Trainer, StepClock]:
    torch.manual_seed(0)
    model = build_causal_lm('gpt2', n_layer=args.layers, n_embd=args.width, n_head=args.heads, vocab_size=vocab,
                            n_positions=args.seq)
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    if arm == 'stream':
        loader = build_train_dataloader(args.data, batch_size=args.batch, seed=0, num_workers=args.workers)
    else:
        source = ReweighStreamingDataset(args.data)
        policy = make_policy('weights', natural_mix(source), temperature=0.5)
        loader = build_mixing_dataloader(source, policy.initial(), batch_size=args.batch, seed=0,
                                         interval=args.interval, lag=max(8, 2 * args.workers), num_workers=args.workers)
        callbacks.append(OnlineMixing(policy))
    steps_total = args.rounds * args.steps + args.warmup_steps
    trainer = Trainer(model=model, train_dataloader=loader, optimizers=torch.optim.AdamW(model.parameters(), lr=1e-4),
                      max_duration=f'{steps_total}ba', algorithms=[LossReweighting('linupper', warmup=0)],
                      callbacks=callbacks, device='cpu', device_train_microbatch_size=args.batch, progress_bar=False,
                      log_to_console=False, seed=0)
    return trainer, clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='data/default', help='a prepared reweigh dataset (default: the demo\'s)')
    parser.add_argument('--steps', type=int, default=25, help='steps per arm per round')
    parser.add_argument('--rounds', type=int, default=8, help='interleaved rounds (arm order shuffled each)')
    parser.add_argument('--warmup-steps', type=int, default=5, help='untimed steps per arm before round 1')
    parser.add_argument('--interval', type=int, default=25, help='steps between the mixing policy\'s updates')
    parser.add_argument('--workers', type=int, default=0, help='dataloader workers of both arms')
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--batch', type=int, default=8)
    args = parser.parse_args()
    try:
        lookup = SampleLookup(args.data)
    except FileNotFoundError as e:
        parser.error(f'{e} (prepare it first: reweigh train yamls/tiny-cpu.yaml prepares data/default)')
    args.seq = lookup.manifest.seq_len
    vocab = len(lookup.tokenizer)

    arms = {arm: build_arm(arm, args, vocab) for arm in ('stream', 'mixed')}
    for trainer, _ in arms.values():
        trainer.fit(duration=f'{args.warmup_steps}ba')
    for _, clock in arms.values():
        clock.times.clear()
    order = list(arms)
    for round_index in range(args.rounds):
        random.Random(round_index).shuffle(order)
        for arm in order:
            arms[arm][0].fit(duration=f'{args.steps}ba')

    print(f'device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}; model: GPT-2 {args.layers} layers x {args.width} wide, vocab {vocab}, seq '
          f'{args.seq}, batch {args.batch}, LinUpper; {args.rounds} interleaved rounds x {args.steps} steps per arm '
          f'(first of each block untimed), {args.workers} dataloader workers, mixing update every {args.interval} steps')
    print('| arm | steps timed | median step (ms) | mean step (ms) | median vs stream | mean vs stream |')
    print('|---|---|---|---|---|---|')
    base_median = statistics.median(arms['stream'][1].times)
    base_mean = statistics.fmean(arms['stream'][1].times)
    for arm, (_, clock) in arms.items():
        median, mean = statistics.median(clock.times), statistics.fmean(clock.times)
        print(f'| {arm} | {len(clock.times)} | {median * 1e3:.2f} | {mean * 1e3:.2f} | {median / base_median:.3f} | '
              f'{mean / base_mean:.3f} |')


if __name__ == '__main__':
    main()
