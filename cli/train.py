"""``python -m reweigh.cli.train CONFIG [KEY=VALUE ...]``: ``reweigh train`` as a module, one process per rank.

That is how Composer's launcher starts it::

    composer -n 2 -m reweigh.cli.train yamls/tiny-cpu.yaml max_duration=20ba

The run itself is :func:`reweigh.train.train`.
"""

from __future__ import annotations

import argparse
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
    try:
        return train_cmd.run(args)
    except ValueError as e:  # ConfigError, UnsafeCheckpointError, unreadable data: user errors, as in `reweigh`
        print(f'reweigh train: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
