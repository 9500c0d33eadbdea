"""Measure the training-step overhead of LossReweighting against plain training.

Arms (same model, data, optimizer; all trained in the same process, interleaved round by round so
that machine noise hits every arm alike):

* ``plain``: ReweighCausalLM without the algorithm (token-mean loss, one cross-entropy pass).
* ``fast``: ReweighCausalLM + LossReweighting (per-sample losses reused from ``loss()``).
* ``hf-plain``: Composer's HuggingFaceModel without the algorithm (Hugging Face computes the loss).
* ``generic``: HuggingFaceModel + LossReweighting (per-sample losses from the logits: one more pass).
* ``history``: ``fast`` plus the LossHistory recorder (Parquet parts every 50 batches, in a temp dir).
* ``eager``, ``fused``: ``fast`` with the step after the all-gather run eagerly or compiled (``fused=False``/``True``;
  ``fast`` is ``fused='auto'``: compiled on CUDA, eager on CPU).
* ``baseline``: ``fast`` with ``LossReweighting`` as it was at git revision ``--baseline-rev`` (its ``algorithms/``
  extracted into a temporary package), to compare a change against the code before it in one run.
* ``naive``: HuggingFaceModel + the paper's public-code recipe (a second cross-entropy pass over a
  shifted *copy* of the logits, and a ``.item()`` host sync every step), for comparison.
* ``materialized``, ``chunked``, ``cce``: ``fast`` with that ``loss_impl`` forced (``plain``, ``fast`` and
  ``history`` use ``--loss-impl``, default ``auto``: ``chunked`` on CPU, ``cce`` on CUDA where installed).
  Their baseline is ``hf-plain``: what a Hugging Face user trains with today.

``--count-ops`` also profiles three steps of each arm with reweighting (``torch.profiler``) and reports the
operators ``LossReweighting.apply`` dispatches per step (top-level ``aten`` ops, those of a compiled region's
wrapper included) and, on CUDA, the kernels they launch.

``--breakdown N`` then trains ``N`` more steps of each arm with reweighting (not ``baseline``) with a
``perf_counter`` wrapper around each event of ``apply`` and around the calls of the step inside ``AFTER_LOSS``, and
prints the median wall time of each per step, nested as they call each other, with what the parent spends outside
the calls listed (median minus the children's medians). Each wrapper adds about a microsecond.

Arms run in blocks of ``--steps`` steps, in a freshly shuffled order each round (seeded), so that drift
and position effects average out over many short rounds. Per-step time is wall time from ``BATCH_START``
to ``BATCH_END`` (with ``torch.cuda.synchronize`` at both ends on CUDA). The first ``--warmup-steps`` of
each arm are dropped. Ratios are of medians from this one run. Memory growth of a step: on CUDA
``torch.cuda.max_memory_allocated`` during an arm's block minus ``memory_allocated`` before it (the largest
over rounds); on CPU (``--cpu-memory``) the peak resident set size of a separate process that trains only
that arm for 3 steps, minus its resident set size just before training.

Examples:
    python scripts/bench_step_overhead.py --steps 10 --rounds 18 --cpu-memory
    python scripts/bench_step_overhead.py --arms plain baseline eager fused --baseline-rev 4c0e6fa --count-ops
    python scripts/bench_step_overhead.py --arms plain fused --steps 10 --rounds 12 --breakdown 60
    python scripts/bench_step_overhead.py --arms hf-plain materialized fast --vocab 128256 --seq 1024 --batch 4 \
        --width 256 --heads 4 --steps 2 --rounds 10 --warmup-steps 1 --cpu-memory
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from composer import Trainer
from composer.core import Algorithm, Callback, Event, State
from composer.loggers import Logger
from composer.models import HuggingFaceModel
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from reweigh.algorithms import LossReweighting, compute_sample_weights
from reweigh.callbacks import LossHistory
from reweigh.models import build_causal_lm


class NaiveReweighting(Algorithm):
    """The straightforward implementation: shifted logits copy, second CE pass, ``.item()`` per step."""

    def match(self, event: Event, state: State) -> bool:
        return event == Event.AFTER_LOSS

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        logits, labels = state.outputs['logits'], state.batch['labels']
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        token_loss = F.cross_entropy(
            shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), reduction='none',
        ).view(shift_labels.shape)
        losses = token_loss.mean(dim=1)
        weights = compute_sample_weights(losses, 'linupper', 1.0)
        logger.log_metrics({'naive/max_weight': weights.max().item()})
        state.loss = (weights * losses).sum()


def timed(algorithm: type[Algorithm]) -> type[Algorithm]:
    """``algorithm`` (a LossReweighting class) that also accumulates the wall time spent in its own ``apply`` per
    batch, and names its work ``reweigh::apply`` for the profiler while ``profiled``."""

    class Timed(algorithm):  # type: ignore[misc, valid-type]

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.per_batch: list[float] = []
            self.profiled = False
            self._acc = 0.0

        def apply(self, event: Event, state: State, logger: Logger) -> None:
            start = time.perf_counter()
            if self.profiled:  # record_function costs host time itself: only while counting
                with torch.profiler.record_function('reweigh::apply'):
                    super().apply(event, state, logger)
            else:
                super().apply(event, state, logger)
            self._acc += time.perf_counter() - start
            if event == Event.BATCH_END:
                self.per_batch.append(self._acc)
                self._acc = 0.0

    return Timed


def baseline_algorithm(rev: str) -> type[Algorithm]:
    """``LossReweighting`` as it was at git revision ``rev``: its ``algorithms/`` folder, extracted into a temporary
    package ``reweigh_baseline`` whose imports of ``reweigh.algorithms`` point at itself."""
    root = Path(tempfile.mkdtemp(prefix='reweigh-baseline-'))
    package = root / 'reweigh_baseline'
    package.mkdir()
    (package / '__init__.py').write_text('')
    archive = subprocess.run(['git', 'archive', rev, 'algorithms'], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(package)], input=archive, check=True)
    for path in (package / 'algorithms').glob('*.py'):
        path.write_text(path.read_text().replace('reweigh.algorithms', 'reweigh_baseline.algorithms'))
    sys.path.insert(0, str(root))
    from reweigh_baseline.algorithms.loss_reweighting import LossReweighting as Baseline

    return Baseline


def count_ops(trainer: Trainer, device: str) -> tuple[float, float]:
    """Top-level ``aten`` operators, and kernels on CUDA, dispatched inside ``reweigh::apply`` per step (3 steps)."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == 'gpu' else [])
    timed = [a for a in trainer.state.algorithms if hasattr(a, 'per_batch')]
    for algorithm in timed:
        algorithm.profiled = True
    with torch.profiler.profile(activities=activities) as prof:
        trainer.fit(duration='3ba')
    ops = kernels = 0

    def walk(event, inside: bool, in_op: bool) -> None:
        nonlocal ops, kernels
        inside = inside or event.name == 'reweigh::apply'
        is_op = event.name.startswith('aten::')
        if inside:
            ops += is_op and not in_op  # an operator's own sub-operators are part of it
            kernels += len(event.kernels)
        for child in event.cpu_children:
            walk(child, inside, in_op or is_op)

    for event in prof.events():
        if event.cpu_parent is None:
            walk(event, False, False)
    return ops / 3, kernels / 3


BREAKDOWN = (  # (depth, label, module, attribute): the calls of the step inside AFTER_LOSS, nested as they run
    (1, 'per_sample_loss_from', 'reweigh.algorithms.loss_reweighting', 'per_sample_loss_from'),
    (1, 'composer_step', 'reweigh.algorithms.loss_reweighting', 'composer_step'),
    (2, 'composer_progress', 'reweigh.algorithms.loss_reweighting', 'composer_progress'),
    (2, 'reweight_microbatch', 'reweigh.algorithms.reweighter', 'reweight_microbatch'),
    (3, 'validate_weight_args', 'reweigh.algorithms.step', 'validate_weight_args'),
    (3, 'gather_global_batch', 'reweigh.algorithms.step', 'gather_global_batch'),
    (3, 'weigh_global_batch', 'reweigh.algorithms.step', 'weigh_global_batch'),  # eager
    (3, 'weigh_global_batch', 'reweigh.algorithms.step', '_FUSED_WEIGH'),  # compiled: one of the two runs
    (3, 'weighted_loss', 'reweigh.algorithms.step', 'weighted_loss'),
    (3, 'MicrobatchWeights', 'reweigh.algorithms.step', 'MicrobatchWeights'),
)
"""What ``--breakdown`` times inside ``AFTER_LOSS``."""


def _timed(fn, into: list[float]):
    """``fn`` that also appends the wall time of each call to ``into``."""
    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)
    return timed_call


@contextlib.contextmanager
def _wrapped(times: dict[str, list[float]]):
    """Every call in :data:`BREAKDOWN` appends its wall time to ``times[label]`` while inside."""
    originals = []
    for _, label, module_name, attribute in BREAKDOWN:
        module = importlib.import_module(module_name)
        originals.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, _timed(getattr(module, attribute), times[label]))
    try:
        yield
    finally:
        for module, attribute, original in originals:
            setattr(module, attribute, original)


def breakdown(trainer: Trainer, steps: int) -> list[tuple[int, str, float]]:
    """``(depth, label, median us per step)`` of each event of ``LossReweighting.apply`` over ``steps`` more steps and
    of the calls of :data:`BREAKDOWN` inside ``AFTER_LOSS``, each parent followed by what it spends outside them."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    (algorithm,) = [a for a in trainer.state.algorithms if hasattr(a, 'per_batch')]
    apply = algorithm.apply
    by_event = {event: _timed(apply, times[event.name]) for event in Event}

    def timed_apply(event: Event, state: State, logger: Logger) -> None:
        by_event[event](event, state, logger)

    algorithm.apply = timed_apply
    try:
        with _wrapped(times):
            trainer.fit(duration=f'{steps}ba')
    finally:
        del algorithm.apply
    median = {label: statistics.median(v) * 1e6 for label, v in times.items() if v}
    tree = [(0, event) for event in ('BATCH_START', 'AFTER_LOSS') if event in median]
    tree += list(dict.fromkeys((depth, label) for depth, label, _, _ in BREAKDOWN if label in median))
    tree += [(0, 'BATCH_END')] if 'BATCH_END' in median else []
    rows = []
    for i, (depth, label) in enumerate(tree):
        rows.append((depth, label, median[label]))
        children = []
        for child_depth, child in tree[i + 1:]:
            if child_depth <= depth:
                break
            children += [child] if child_depth == depth + 1 else []
        if children:
            rows.append((depth + 1, f'({label} outside the calls below)', median[label] - sum(median[c] for c in children)))
    return rows


class StepTimer(Callback):

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, state: State) -> None:
        if state.device.name == 'gpu':
            torch.cuda.synchronize()

    def batch_start(self, state: State, logger: Logger) -> None:
        self._sync(state)
        self._start = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        self._sync(state)
        self.times.append(time.perf_counter() - self._start)


class RandomTokens(Dataset):

    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'input_ids': self.ids[i], 'labels': self.ids[i], 'sample_id': torch.tensor(i), 'domain': torch.tensor(i % 3)}


ARMS = ('plain', 'fast', 'eager', 'fused', 'baseline', 'history', 'hf-plain', 'generic', 'naive', 'materialized', 'chunked',
        'cce')
BASELINE = {arm: 'plain' for arm in ('plain', 'fast', 'eager', 'fused', 'baseline', 'history')} | {
    arm: 'hf-plain' for arm in ('hf-plain', 'generic', 'naive', 'materialized', 'chunked', 'cce')
}


def build_arm(arm: str, args: argparse.Namespace, device: str) -> tuple[Trainer, StepTimer]:
    """One arm's Trainer, built from the same seed, data and optimizer as every other arm."""
    torch.manual_seed(0)
    model = build_causal_lm(
        'gpt2', n_layer=args.layers, n_embd=args.width, n_head=args.heads, vocab_size=args.vocab,
        n_positions=args.seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        loss_impl=arm if arm in ('materialized', 'chunked', 'cce') else args.loss_impl,
    )
    if arm in ('hf-plain', 'generic', 'naive'):
        model = HuggingFaceModel(model.model, shift_labels=True)
    algorithms = {
        'plain': [],
        'hf-plain': [],
        'naive': [NaiveReweighting()],
    }.get(arm)
    if algorithms is None:
        fused = {'eager': {'fused': False}, 'fused': {'fused': True}}.get(arm, {})
        algorithm = timed(baseline_algorithm(args.baseline_rev)) if arm == 'baseline' else timed(LossReweighting)
        algorithms = [algorithm('linupper', warmup=0, **fused)]
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if arm == 'history':
        callbacks.append(LossHistory(folder=tempfile.mkdtemp(prefix='reweigh-bench-'), flush_interval='50ba'))
    steps_total = args.rounds * args.steps + args.warmup_steps
    data = RandomTokens(args.batch * steps_total, args.seq, args.vocab)
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=args.batch),
        optimizers=torch.optim.AdamW(model.parameters(), lr=1e-4),
        max_duration=f'{steps_total}ba',
        algorithms=algorithms,
        callbacks=callbacks,
        device=device,
        precision=args.precision or ('amp_bf16' if device == 'gpu' else 'fp32'),
        progress_bar=False,
        log_to_console=False,
        seed=0,
    )
    return trainer, timer


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak; unlike ru_maxrss it does not survive exec from the parent) in MiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(f'{field}:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='gpu' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--arms', nargs='+', choices=ARMS, help='default: all (without cce where CUDA is absent)')
    parser.add_argument('--steps', type=int, default=10, help='timed steps per arm per round')
    parser.add_argument('--rounds', type=int, default=18, help='interleaved rounds (arm order shuffled each)')
    parser.add_argument('--warmup-steps', type=int, default=5, help='untimed steps per arm before round 1')
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--vocab', type=int, default=4096)
    parser.add_argument('--seq', type=int, default=128)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--loss-impl', default='auto', help='loss_impl of the plain/fast/history arms (default auto)')
    parser.add_argument('--precision', help='Composer precision (default: amp_bf16 on GPU, fp32 on CPU)')
    parser.add_argument('--baseline-rev', help='git revision whose LossReweighting the baseline arm runs')
    parser.add_argument('--count-ops', action='store_true', help='also count the operators LossReweighting.apply dispatches')
    parser.add_argument('--breakdown', type=int, metavar='N', help='then time the calls inside apply over N more steps')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cpu-memory', action='store_true', help='also measure each arm\'s peak RSS in its own process')
    parser.add_argument('--peak-rss-of', choices=ARMS, help=argparse.SUPPRESS)  # the child of --cpu-memory
    args = parser.parse_args()
    if args.arms is None:
        args.arms = [arm for arm in ARMS if (arm != 'cce' or args.device == 'gpu') and (arm != 'baseline' or args.baseline_rev)]
    if 'baseline' in args.arms and not args.baseline_rev:
        parser.error('the baseline arm needs --baseline-rev')

    if args.peak_rss_of:
        trainer, _ = build_arm(args.peak_rss_of, args, 'cpu')
        before = _rss_mib('VmRSS')
        trainer.fit(duration='3ba')
        print(f'rss_growth_mib={_rss_mib("VmHWM") - before:.1f}')
        return

    arms = {arm: build_arm(arm, args, args.device) for arm in args.arms}
    peak: dict[str, float] = {}
    for trainer, _ in arms.values():
        trainer.fit(duration=f'{args.warmup_steps}ba')
    for trainer, timer in arms.values():
        timer.times.clear()
        for algorithm in trainer.state.algorithms:
            if hasattr(algorithm, 'per_batch'):
                algorithm.per_batch.clear()
    order = list(arms)
    for round_index in range(args.rounds):
        random.Random(round_index).shuffle(order)
        for arm in order:
            trainer = arms[arm][0]
            if args.device == 'gpu':
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            trainer.fit(duration=f'{args.steps}ba')
            if args.device == 'gpu':
                growth = (torch.cuda.max_memory_allocated() - before) / 2**20
                peak[arm] = max(peak.get(arm, 0.0), growth)

    if args.cpu_memory and args.device == 'cpu':
        model_args = [f'--{k}={getattr(args, k)}' for k in ('layers', 'width', 'heads', 'vocab', 'seq', 'batch')]
        model_args += [f'--loss-impl={args.loss_impl}'] + ([f'--precision={args.precision}'] if args.precision else [])
        model_args += [f'--baseline-rev={args.baseline_rev}'] if args.baseline_rev else []
        for arm in arms:
            out = subprocess.run(
                [sys.executable, __file__, '--peak-rss-of', arm, '--rounds', '1', '--warmup-steps', '0', *model_args],
                capture_output=True, text=True, check=True,
            ).stdout
            peak[arm] = float(out.rsplit('rss_growth_mib=', 1)[1])

    medians = {arm: statistics.median(timer.times) * 1e3 for arm, (_, timer) in arms.items()}
    steps = {arm: len(timer.times) for arm, (_, timer) in arms.items()}
    apply_ms = {arm: statistics.median(a.per_batch) * 1e3 for arm, (trainer, _) in arms.items()
                for a in trainer.state.algorithms if hasattr(a, 'per_batch')}
    counts: dict[str, tuple[float, float]] = {}
    if args.count_ops:  # after the timing: the profiled steps are not among the timed ones
        for arm in apply_ms:
            counts[arm] = count_ops(arms[arm][0], args.device)
    parts = {arm: breakdown(arms[arm][0], args.breakdown) for arm in apply_ms if arm != 'baseline'} if args.breakdown else {}

    device_name = torch.cuda.get_device_name() if args.device == 'gpu' else platform.processor() or platform.machine()
    print(
        f'device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, '
        f'precision {args.precision or ("amp_bf16" if args.device == "gpu" else "fp32")}, loss_impl {args.loss_impl}',
    )
    print(
        f'model: GPT-2 {args.layers} layers x {args.width} wide, vocab {args.vocab}, seq {args.seq}, '
        f'batch {args.batch}; {args.rounds} interleaved rounds x {args.steps} steps per arm',
    )
    print(
        '| arm | steps timed | median step (ms) | vs baseline | baseline | in LossReweighting.apply (ms/step) |' +
        ((' GPU memory growth MiB |' if args.device == 'gpu' else ' RSS growth MiB |') if peak else '') +
        ((' ops in apply per step |' + (' kernels |' if args.device == 'gpu' else '')) if counts else ''),
    )
    count_columns = (2 if args.device == 'gpu' else 1) if counts else 0
    print('|---|---|---|---|---|---|' + ('---|' if peak else '') + '---|' * count_columns)
    rows = []
    for arm in arms:
        ref = BASELINE[arm]
        ratio = medians[arm] / medians[ref] if ref in medians else float('nan')
        row = {
            'arm': arm, 'steps': steps[arm], 'median_ms': medians[arm], 'ratio': ratio, 'baseline': ref,
            'apply_ms': apply_ms.get(arm, float('nan')),
        }
        if peak:
            row['growth_mib'] = peak[arm]
        ops, kernels = counts.get(arm, (float('nan'), float('nan')))
        if counts:
            row['ops'], row['kernels'] = ops, kernels
        rows.append(row)
        print(
            f"| {arm} | {steps[arm]} | {medians[arm]:.2f} | {ratio:.4f} | {ref} | "
            f"{f'{apply_ms[arm]:.3f}' if arm in apply_ms else '-'} |" + (f" {peak[arm]:.0f} |" if peak else '') +
            ((f' {ops:.0f} |' + (f' {kernels:.0f} |' if args.device == 'gpu' else '')) if counts else ''),
        )
    if parts:
        print(f'\nWhere the time in LossReweighting.apply goes: median us per step over {args.breakdown} more steps')
        print('| call | ' + ' | '.join(parts) + ' |')
        print('|---|' + '---|' * len(parts))
        labels = list(dict.fromkeys((depth, label) for rows_ in parts.values() for depth, label, _ in rows_))
        for depth, label in labels:
            cells = [next((f'{us:.1f}' for d, lab, us in parts[arm] if (d, lab) == (depth, label)), '-') for arm in parts]
            print(f'| {". " * depth}{label} | ' + ' | '.join(cells) + ' |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'args': vars(args), 'device': device_name, 'rows': rows,
                       'breakdown': {arm: [list(r) for r in rows_] for arm, rows_ in parts.items()}}, f, indent=2)


if __name__ == '__main__':
    main()
