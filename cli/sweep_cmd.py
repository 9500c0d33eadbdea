"""``reweigh sweep CONFIG --arms uniform,linupper --seeds 3``: a grid of arms x seeds, then ``reweigh compare``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'sweep',
        help='train a grid of arms x seeds from one config, then compare them',
        description='Train every arm with every seed from one YAML config (one `reweigh train` per run, one '
        'after the other), skipping runs that already finished and resuming interrupted ones, then run '
        '`reweigh compare` on the result. Run ARM-SEED is called NAME-ARM-sSEED and goes to OUT/NAME-ARM-sSEED. '
        'Example: reweigh sweep yamls/tiny-cpu.yaml --arms uniform,linupper,quadratic --seeds 3',
    )
    p.add_argument('config', help='YAML training config shared by every run')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE', help='dotted overrides for every run')
    p.add_argument('--arms', default='uniform,linupper',
                   help='comma-separated arms: "uniform" (no reweighting) or a strategy name (linupper, quadratic, '
                   'extremes, upper), which keeps the config\'s other reweighting settings (default: uniform,linupper)')
    p.add_argument('--arm', nargs='+', action='append', default=[], metavar=('NAME', 'KEY=VALUE'),
                   help='an arm of your own: a name and its overrides, e.g. --arm r0.5 algorithms.loss_reweighting.r=0.5 '
                   '(repeatable)')
    p.add_argument('--seeds', default='3', help='how many seeds (the config\'s seed, +1, +2, ...) or a comma-separated '
                   'list of seeds (default: 3)')
    p.add_argument('--name', help='prefix of the run names (default: the config\'s run_name)')
    p.add_argument('--out', help='folder of the runs (default: runs/NAME-sweep)')
    p.add_argument('--print-commands', action='store_true',
                   help='print one `reweigh train` command per unfinished run instead of running them (to spread '
                   'them over machines or GPUs), and exit')
    p.add_argument('--no-compare', action='store_true', help='train only; do not run `reweigh compare` afterwards')
    p.set_defaults(run=run, extra='composer')  # reweigh.integrations.extras


class Planned(NamedTuple):
    arm: str
    seed: int
    run_dir: Path
    overrides: list[str]
    config: str
    """The run's resolved config as ``reweigh train`` writes it to ``config.yaml``."""


def _arms(args: argparse.Namespace) -> dict[str, list[str]]:
    from reweigh.algorithms import available_strategies
    from reweigh.safety.names import check_name

    strategies = available_strategies()
    arms: dict[str, list[str]] = {}
    for name in [a.strip() for a in args.arms.split(',') if a.strip()] if args.arms else []:
        if name == 'uniform':
            arms[name] = ['algorithms.loss_reweighting=null']
        elif name in strategies:
            arms[name] = [f'algorithms.loss_reweighting.strategy={name}']
        else:
            raise ValueError(f'--arms: {name!r} is neither "uniform" nor a strategy ({", ".join(sorted(strategies))}); '
                             'define it with --arm NAME KEY=VALUE ...')
    for name, *overrides in args.arm:
        check_name('--arm: the arm name', name)
        if name in arms:
            raise ValueError(f'--arm: arm {name!r} is defined twice.')
        arms[name] = overrides
    if not arms:
        raise ValueError('no arms: give --arms and/or --arm.')
    return arms


def _seeds(text: str, base: int) -> list[int]:
    try:
        if ',' in text:
            seeds = [int(s) for s in text.split(',') if s.strip()]
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = [base + i for i in range(count)]
    except ValueError:
        raise ValueError(f'--seeds: {text!r} is neither a count >= 1 nor a comma-separated list of seeds.') from None
    if len(set(seeds)) < len(seeds):
        raise ValueError(f'--seeds: {text!r} repeats a seed.')
    return seeds


def plan(args: argparse.Namespace) -> tuple[list[Planned], Path, Any]:
    """Every run of the sweep, with its overrides and validated config (raises ConfigError naming the run), the
    sweep's folder, and the shared config without the runs' overrides."""
    from omegaconf import OmegaConf

    from reweigh.train.config import ConfigError, load_config

    base = load_config(args.config, args.overrides)
    prefix = args.name or base.run_name
    out = Path(args.out or f'runs/{prefix}-sweep')
    runs = []
    for arm, arm_overrides in _arms(args).items():
        for seed in _seeds(args.seeds, base.seed):
            name = f'{prefix}-{arm}-s{seed}'
            run_dir = out / name
            overrides = [*args.overrides, *arm_overrides, f'seed={seed}', f'run_name={name}', f'run_dir={run_dir}',
                         'autoresume=true', 'history.folder=null']
            if base.save_folder is not None and '{run_name}' not in base.save_folder:
                overrides.append('save_folder=null')  # one folder for every run would mix their checkpoints
            try:
                config = OmegaConf.to_yaml(load_config(args.config, overrides))
            except ConfigError as e:
                raise ConfigError(f'run {name}: {e}') from None
            runs.append(Planned(arm, seed, run_dir, overrides, config))
    return runs, out, base


def finished(planned: Planned) -> bool:
    """Whether the run ended (summary.json) with the very config it would run with now."""
    from reweigh.train.run_folder import RunFolder

    return RunFolder(planned.run_dir).finished(planned.config)


def _command(config: str, overrides: list[str]) -> list[str]:
    return ['reweigh', 'train', config, *overrides]


def run(args: argparse.Namespace) -> int:
    from reweigh.train import data
    from reweigh.train.run_folder import RunFolder

    runs, out, base = plan(args)
    todo = [p for p in runs if not finished(p)]
    data.prepare_if_needed(base)  # once, before runs that may go in parallel
    if args.print_commands:
        for p in todo:
            print(shlex.join(_command(args.config, p.overrides)))
        return 0
    print(f'reweigh sweep: {len(runs)} runs ({len(runs) - len(todo)} finished already) in {out}', flush=True)
    failed = []
    for i, p in enumerate(todo, 1):
        p.run_dir.mkdir(parents=True, exist_ok=True)
        log = Path(RunFolder(p.run_dir).train_log)
        print(f'  [{i}/{len(todo)}] {p.run_dir.name}: training (log: {log})', flush=True)
        start = time.monotonic()
        with open(log, 'a') as f:
            code = subprocess.call([sys.executable, '-m', 'reweigh.cli.train', args.config, *p.overrides],
                                   stdout=f, stderr=subprocess.STDOUT, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        if code != 0:
            failed.append(p.run_dir.name)
            tail = log.read_text(errors='replace').strip().splitlines()[-1:] or ['']
            print(f'      failed (exit {code}) after {time.monotonic() - start:.0f} s: {tail[0]}', flush=True)
        else:
            print(f'      done in {time.monotonic() - start:.0f} s', flush=True)
    if failed:
        print(f'reweigh sweep: {len(failed)} run(s) failed: {", ".join(failed)}; rerun the same command to resume them.',
              file=sys.stderr)
        return 1
    if args.no_compare:
        return 0
    from reweigh.cli import compare_cmd

    names = [f'{p.arm}={p.run_dir}' for p in runs]
    return compare_cmd.run(argparse.Namespace(runs=names, baseline=None, out=str(out / 'compare'), no_histories=False,
                                              dataset=None))
