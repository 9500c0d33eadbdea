"""``python -m reweigh.cli.train CONFIG [KEY=VALUE ...]``: ``reweigh train`` as a module, one process per rank.

That is how Composer's launcher starts it, and ``torchrun`` too (on several nodes it names the node ``GROUP_RANK``,
which becomes Composer's ``NODE_RANK`` here)::

    composer -n 2 -m reweigh.cli.train yamls/tiny-cpu.yaml max_duration=20ba
    torchrun --nnodes 2 --nproc-per-node 8 --node-rank K --master-addr HOST -m reweigh.cli.train CONFIG

The run itself is :func:`reweigh.train.train`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from reweigh.cli import train_cmd

__all__ = ['main']


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reweigh.cli.train CONFIG [KEY=VALUE ...]`` (what Composer's launcher runs per rank)."""
    parser = argparse.ArgumentParser(prog='reweigh.cli.train')
    parser.add_argument('config')
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args(argv)
    if 'GROUP_RANK' in os.environ:  # torchrun's name for the node's rank (it wins over an inherited NODE_RANK)
        os.environ['NODE_RANK'] = os.environ['GROUP_RANK']
    try:
        return train_cmd.run(args)
    except ValueError as e:  # ConfigError, UnsafeCheckpointError, unreadable data: user errors, as in `reweigh`
        print(f'reweigh train: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
