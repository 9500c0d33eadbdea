"""Measure the training-step overhead of LossReweighting against plain training.

Arms (same model, data, optimizer; all trained in the same process, interleaved round by round so
that machine noise hits every arm alike):

* ``plain``: ReweighCausalLM without the algorithm (token-mean loss, one cross-entropy pass).
* ``fast``: ReweighCausalLM + LossReweighting (per-sample losses reused from ``loss()``).
* ``hf-plain``: Composer's HuggingFaceModel without the algorithm (Hugging Face computes the loss).
* ``generic``: HuggingFaceModel + LossReweighting (per-sample losses from the logits: one more pass).
* ``history``: ``fast`` plus the LossHistory recorder (Parquet parts every 50 batches, in a temp dir).
* ``naive``: HuggingFaceModel + the paper's public-code recipe (a second cross-entropy pass over a
  shifted *copy* of the logits, and a ``.item()`` host sync every step), for comparison.
* ``materialized``, ``chunked``, ``cce``: ``fast`` with that ``loss_impl`` forced (``plain``, ``fast`` and
  ``history`` use ``--loss-impl``, default ``auto``: ``chunked`` on CPU, ``cce`` on CUDA where installed).
  Their baseline is ``hf-plain``: what a Hugging Face user trains with today.

Arms run in blocks of ``--steps`` steps, in a freshly shuffled order each round (seeded), so that drift
and position effects average out over many short rounds. Per-step time is wall time from ``BATCH_START``
to ``BATCH_END`` (with ``torch.cuda.synchronize`` at both ends on CUDA). The first ``--warmup-steps`` of
each arm are dropped. Ratios are of medians from this one run. Memory growth of a step: on CUDA
``torch.cuda.max_memory_allocated`` during an arm's block minus ``memory_allocated`` before it (the largest
over rounds); on CPU (``--cpu-memory``) the peak resident set size of a separate process that trains only
that arm for 3 steps, minus its resident set size just before training.

Examples:
    python scripts/bench_step_overhead.py --steps 10 --rounds 18 --cpu-memory
    python scripts/bench_step_overhead.py --arms hf-plain materialized fast --vocab 128256 --seq 1024 --batch 4 \
        --width 256 --heads 4 --steps 2 --rounds 10 --warmup-steps 1 --cpu-memory
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

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


class TimedLossReweighting(LossReweighting):
    """LossReweighting that also accumulates the wall time spent in its own ``apply`` per batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.per_batch: list[float] = []
        self._acc = 0.0

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        start = time.perf_counter()
        super().apply(event, state, logger)
        self._acc += time.perf_counter() - start
        if event == Event.BATCH_END:
            self.per_batch.append(self._acc)
            self._acc = 0.0


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


ARMS = ('plain', 'fast', 'history', 'hf-plain', 'generic', 'naive', 'materialized', 'chunked', 'cce')
BASELINE = {arm: 'plain' for arm in ('plain', 'fast', 'history')} | {
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
    }.get(arm, [TimedLossReweighting('linupper', warmup=0)])
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
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cpu-memory', action='store_true', help='also measure each arm\'s peak RSS in its own process')
    parser.add_argument('--peak-rss-of', choices=ARMS, help=argparse.SUPPRESS)  # the child of --cpu-memory
    args = parser.parse_args()
    if args.arms is None:
        args.arms = [arm for arm in ARMS if arm != 'cce' or args.device == 'gpu']

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
            if isinstance(algorithm, TimedLossReweighting):
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
        for arm in arms:
            out = subprocess.run(
                [sys.executable, __file__, '--peak-rss-of', arm, '--rounds', '1', '--warmup-steps', '0', *model_args],
                capture_output=True, text=True, check=True,
            ).stdout
            peak[arm] = float(out.rsplit('rss_growth_mib=', 1)[1])

    medians = {arm: statistics.median(timer.times) * 1e3 for arm, (_, timer) in arms.items()}
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
        ((' GPU memory growth MiB |' if args.device == 'gpu' else ' RSS growth MiB |') if peak else ''),
    )
    print('|---|---|---|---|---|---|' + ('---|' if peak else ''))
    rows = []
    for arm, (trainer, timer) in arms.items():
        ref = BASELINE[arm]
        ratio = medians[arm] / medians[ref] if ref in medians else float('nan')
        timed = [a for a in trainer.state.algorithms if isinstance(a, TimedLossReweighting)]
        apply_ms = statistics.median(timed[0].per_batch) * 1e3 if timed else float('nan')
        row = {
            'arm': arm, 'steps': len(timer.times), 'median_ms': medians[arm], 'ratio': ratio, 'baseline': ref,
            'apply_ms': apply_ms,
        }
        if peak:
            row['growth_mib'] = peak[arm]
        rows.append(row)
        print(
            f"| {arm} | {len(timer.times)} | {medians[arm]:.2f} | {ratio:.4f} | {ref} | "
            f"{'-' if not timed else f'{apply_ms:.3f}'} |" + (f" {peak[arm]:.0f} |" if peak else ''),
        )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'args': vars(args), 'device': device_name, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
    main()
