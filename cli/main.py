"""Entry point of the ``reweigh`` command: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

from reweigh.cli import analyze_cmd, compare_cmd, curate_cmd, explore_cmd, prepare_cmd, sweep_cmd, train_cmd, weights_cmd
from reweigh.integrations.extras import require

# Each module registers its arguments only; its run() imports what the command needs, so that
# `reweigh --help` and argument errors answer at once. A command that needs an extra (pyproject.toml) names it as
# its `extra` default, checked before it runs.
_SUBCOMMANDS = (weights_cmd, prepare_cmd, train_cmd, sweep_cmd, analyze_cmd, compare_cmd, curate_cmd, explore_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``reweigh``, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog='reweigh',
        description='Dynamic loss-based sample reweighting for LLM pretraining.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {version("reweigh")}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``reweigh`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, 'extra', None):
            require(args.extra, 'this command')
        return args.run(args)
    except ValueError as e:
        print(f'reweigh {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
