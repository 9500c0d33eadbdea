"""``reweigh train CONFIG [KEY=VALUE ...]``: the subcommand's arguments and its summary; the work is
:func:`reweigh.train.train`, imported only when the command runs (so ``reweigh --help`` does not load torch or Composer)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'train',
        help='train from a YAML config',
        description='Train a model from a YAML config (llm-foundry style) with Composer. '
        'Example: reweigh train yamls/tiny-cpu.yaml max_duration=50ba algorithms.loss_reweighting.r=0.5',
    )
    p.add_argument('config', help='YAML training config')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE', help='dotted overrides, e.g. max_duration=20ba')
    p.add_argument('--force', action='store_true',
                   help="take the run folder's lease even from a launch that looks alive (lease.force=true)")
    p.set_defaults(run=run, extra='composer')  # reweigh.integrations.extras


def run(args: argparse.Namespace) -> int:
    from composer.utils import dist

    from reweigh.callbacks.preemption import PREEMPTED_EXIT_CODE, Preempted
    from reweigh.train.config import load_config
    from reweigh.train.trainer import train

    overrides = [*args.overrides, 'lease.force=true'] if getattr(args, 'force', False) else args.overrides
    try:
        summary = train(load_config(args.config, overrides))
    except Preempted as e:
        if dist.get_global_rank() == 0:
            print(f'reweigh train: {e}; run the same command to resume (exit {PREEMPTED_EXIT_CODE})', file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if dist.get_global_rank() == 0:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    from reweigh.train.run_folder import RunFolder

    folder = RunFolder(summary['run_dir'])
    print(f"\nreweigh train: finished {summary['run_name']} after {summary['steps']} steps")
    print(f"  checkpoints:  {summary['save_folder']}")
    if summary['history']:
        print(f"  loss history: {summary['history']}  (open with pyarrow.dataset; `reweigh analyze {summary['run_dir']}`)")
    print(f"  metrics:      {folder.metrics}  (evaluations and training loss per step; "
          f"`reweigh compare {summary['run_dir']} OTHER_RUN ...`)")
    print(f'  summary:      {folder.summary_file}')
    for name, value in sorted(summary['eval'].items()):
        print(f'  {name}: {value:.4f}')
