"""``reweigh weights``: print the weights a strategy gives a list of losses."""

from __future__ import annotations

import argparse

from reweigh.algorithms.constants import DEFAULT_DELTA, DEFAULT_R, DEFAULT_STRATEGY


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'weights',
        help='show the weights a strategy assigns to per-sample losses',
        description='Print the weights compute_sample_weights gives LOSS values (one per sample). '
        'Example: reweigh weights 0.5 2.0 3.5 --strategy linupper --r 1.0',
    )
    p.add_argument('losses', nargs='+', type=float, metavar='LOSS')
    p.add_argument('--strategy', default=DEFAULT_STRATEGY,
                   help=f'uniform, linupper, quadratic, extremes, upper, or one added with register_strategy '
                   f'(default {DEFAULT_STRATEGY})')
    p.add_argument('--r', type=float, default=DEFAULT_R, help=f'softmax temperature, > 0 (default {DEFAULT_R})')
    p.add_argument('--delta', type=float, default=DEFAULT_DELTA,
                   help=f'normalisation half-width, > 0 (default {DEFAULT_DELTA})')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from reweigh.algorithms import compute_sample_weights

    losses = torch.tensor(args.losses, dtype=torch.float32)
    weights = compute_sample_weights(losses, args.strategy, args.r, args.delta)
    print('loss\tweight')
    for loss, weight in zip(losses.tolist(), weights.tolist()):
        print(f'{loss:.6g}\t{weight:.6f}')
    return 0
