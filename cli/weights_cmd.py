"""``reweigh weights``: print the weights a strategy gives a list of losses."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'weights',
        help='show the weights a strategy assigns to per-sample losses',
        description='Print the weights compute_sample_weights gives LOSS values (one per sample). '
        'Example: reweigh weights 0.5 2.0 3.5 --strategy linupper --r 1.0',
    )
    p.add_argument('losses', nargs='+', type=float, metavar='LOSS')
    p.add_argument('--strategy', default='linupper',
                   help='uniform, linupper, quadratic, extremes, upper, or one added with register_strategy')
    p.add_argument('--r', type=float, default=1.0, help='softmax temperature, > 0 (default 1.0)')
    p.add_argument('--delta', type=float, default=1.0, help='normalisation half-width, > 0 (default 1.0)')
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
