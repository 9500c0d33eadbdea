"""Throughput of the loss-history writer, and of `reweigh analyze` on a history the size of a large run.

* write: rows/s the background writer (:class:`~reweigh.history.writer.HistoryWriter`) turns into zstd
  Parquet parts (chunks of one microbatch each, as in training), end to end (queue -> Parquet on disk).
* analyze: wall time, rows/s and peak resident memory of ``reweigh analyze`` (the CLI, in a fresh process,
  so its start-up counts) over ``--rows`` rows laid out as a run of ``--ranks`` ranks leaves them: one
  folder per rank, one part per ``--steps-per-part`` steps (LossHistory's default flush is 100 steps).
  Sample ids repeat ``--visits`` times on average.

Example:
    python scripts/bench_history.py --rows 100000000 --ranks 64 --batch 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reweigh.history.format import HISTORY_SCHEMA, INT_COLUMNS, part_name
from reweigh.history.writer import HistoryChunk, HistoryWriter


def bench_writer(batch: int, steps: int, folder: Path) -> float:
    writer = HistoryWriter(folder, 0, {b'reweigh': b'{}'}, max_queued=4096)
    ints = torch.randint(0, 1 << 40, (len(INT_COLUMNS), batch))
    floats = torch.rand(2, batch)
    start = time.perf_counter()
    for step in range(steps):
        writer.put(HistoryChunk(step, 0, ints, floats, 1.0, True, None))
        if (step + 1) % 100 == 0:
            writer.flush(wait=False)
    writer.close()
    return batch * steps / (time.perf_counter() - start)


def _write_rank(folder: Path, rank: int, steps: int, per_rank: int, steps_per_part: int, ids: int, seed: int) -> int:
    rng = np.random.default_rng(seed + rank)
    rank_dir = folder / f'rank{rank}'
    rank_dir.mkdir(parents=True)
    for first in range(0, steps, steps_per_part):
        last = min(steps, first + steps_per_part) - 1
        n = (last - first + 1) * per_rank
        step = np.repeat(np.arange(first, last + 1, dtype=np.int64), per_rank)
        domain = rng.integers(0, 7, n).astype(np.int32)
        table = pa.Table.from_arrays([
            pa.array(step), pa.array(np.zeros(n, np.int16)), pa.array(np.full(n, rank, np.int16)),
            pa.array(rng.integers(0, ids, n)), pa.array(domain), pa.array(np.full(n, 2047, np.int32)),
            pa.array(np.full(n, -1, np.int32)),
            pa.array((2 + domain + rng.random(n)).astype(np.float32)),
            pa.array((rng.random(n) * 2 / (per_rank * 64)).astype(np.float32)), pa.array(np.ones(n, np.float32)),
            pa.array(step >= 1000),
        ], schema=HISTORY_SCHEMA)
        pq.write_table(table, rank_dir / part_name(first, last), compression='zstd')
    return steps * per_rank


def make_history(folder: Path, rows: int, ranks: int, batch: int, steps_per_part: int, visits: float) -> int:
    """A synthetic history of about ``rows`` rows: ``batch`` rows per step split over ``ranks`` folders."""
    per_rank = batch // ranks
    steps = rows // (per_rank * ranks)
    ids = max(1, int(rows / visits))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        jobs = [pool.submit(_write_rank, folder, r, steps, per_rank, steps_per_part, ids, 0) for r in range(ranks)]
        return sum(j.result() for j in jobs)


def bench_analyze(folder: Path, out: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (GiB) of ``reweigh analyze FOLDER`` in a fresh process, and its output."""
    code = ('import resource, sys; from reweigh.cli.main import main; rc = main(sys.argv[1:]); '
            'print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}"); sys.exit(rc)')
    start = time.perf_counter()
    done = subprocess.run([sys.executable, '-c', code, 'analyze', str(folder), '--out', str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'reweigh analyze failed:\n{done.stderr}')
    wall = time.perf_counter() - start
    peak = int(done.stdout.rsplit('peak_rss_kib=', 1)[1]) / 2**20
    return wall, peak, done.stdout.split('peak_rss_kib=')[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=10_000_000)
    parser.add_argument('--ranks', type=int, default=8)
    parser.add_argument('--batch', type=int, default=512, help='rows per step over all ranks (global batch)')
    parser.add_argument('--steps-per-part', type=int, default=100)
    parser.add_argument('--visits', type=float, default=4.0, help='average visits per sample id')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--workdir', help='where to write the history (default: a temporary folder)')
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        write = [bench_writer(512, 2000, Path(tempfile.mkdtemp(dir=tmp))) for _ in range(args.repeats)]
        print(f'writer: median {statistics.median(write):,.0f} rows/s over {args.repeats} runs '
              f'(2000 chunks of 512 rows, zstd Parquet, flush every 100 chunks)', flush=True)
        folder = Path(tmp) / 'history'
        start = time.perf_counter()
        rows = make_history(folder, args.rows, args.ranks, args.batch, args.steps_per_part, args.visits)
        files = sum(1 for _ in folder.rglob('part-*.parquet'))
        size = sum(p.stat().st_size for p in folder.rglob('part-*.parquet')) / 2**30
        print(f'history: {rows:,} rows, {args.ranks} ranks, {files:,} part files, {size:.2f} GiB, '
              f'~{args.visits:g} visits per sample (written in {time.perf_counter() - start:.0f} s)', flush=True)
        runs = [bench_analyze(folder, Path(tmp) / f'out{i}') for i in range(args.repeats)]
    walls, peaks = [r[0] for r in runs], [r[1] for r in runs]
    wall = statistics.median(walls)
    print(runs[-1][2])
    print(f'reweigh analyze, whole CLI process ({os.cpu_count()} cores): median {wall:.1f} s '
          f'(runs: {", ".join(f"{w:.1f}" for w in walls)}) = {rows / wall:,.0f} rows/s; '
          f'peak RSS max {max(peaks):.2f} GiB')


if __name__ == '__main__':
    main()
