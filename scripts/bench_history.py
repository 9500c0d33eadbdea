"""Throughput of the loss-history writer and of `reweigh analyze`'s tables on a large synthetic history.

* write: rows/s the background writer turns into zstd Parquet parts (chunks of one microbatch each,
  as in training), measured end to end (queue -> Parquet on disk).
* analyze: rows/s of ``load_history`` + ``analyze_history`` over ``--rows`` rows (default 10 million)
  spread over part files as a long run would leave them.

Example:
    python scripts/bench_history.py --rows 10000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reweigh.algorithms import HISTORY_SCHEMA
from reweigh.algorithms.history import _Chunk, _Writer
from reweigh.cli.analysis import analyze_history, load_history


def bench_writer(batch: int, steps: int, folder: Path) -> float:
    writer = _Writer(folder, 0, {b'reweigh': b'{}'}, max_queued=4096)
    ints = torch.randint(0, 1 << 40, (3, batch))
    floats = torch.rand(2, batch)
    start = time.perf_counter()
    for step in range(steps):
        writer.put(_Chunk(step, 0, ints, floats, 1.0, True, None))
        if (step + 1) % 100 == 0:
            writer.flush(wait=False)
    writer.close()
    return batch * steps / (time.perf_counter() - start)


def make_history(folder: Path, rows: int, batch: int, steps_per_part: int) -> int:
    rng = np.random.default_rng(0)
    steps = rows // batch
    rank_dir = folder / 'rank0'
    rank_dir.mkdir(parents=True)
    for first in range(0, steps, steps_per_part):
        last = min(steps, first + steps_per_part) - 1
        n = (last - first + 1) * batch
        step = np.repeat(np.arange(first, last + 1, dtype=np.int64), batch)
        domain = rng.integers(0, 7, n).astype(np.int32)
        table = pa.Table.from_arrays([
            pa.array(step), pa.array(np.zeros(n, np.int16)), pa.array(np.zeros(n, np.int16)),
            pa.array(rng.integers(0, rows // 4, n)), pa.array(domain), pa.array(np.full(n, 511, np.int32)),
            pa.array((2 + domain + rng.random(n)).astype(np.float32)),
            pa.array(np.full(n, 1.0 / batch, np.float32)), pa.array(np.ones(n, np.float32)),
            pa.array(step >= 1000),
        ], schema=HISTORY_SCHEMA)
        pq.write_table(table, rank_dir / f'part-{first:09d}-{last:09d}.parquet', compression='zstd')
    return steps * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=10_000_000)
    parser.add_argument('--batch', type=int, default=512, help='rows per step (global batch)')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        write = [bench_writer(args.batch, 2000, Path(tempfile.mkdtemp(dir=tmp))) for _ in range(args.repeats)]
        folder = Path(tmp) / 'history'
        rows = make_history(folder, args.rows, args.batch, steps_per_part=1000)
        load_times, analyze_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            table = load_history(str(folder))
            loaded = time.perf_counter()
            analyze_history(table)
            load_times.append(loaded - start)
            analyze_times.append(time.perf_counter() - loaded)
            del table
    load_s, analyze_s = statistics.median(load_times), statistics.median(analyze_times)
    print(f'writer: median {statistics.median(write):,.0f} rows/s over {args.repeats} runs '
          f'(2000 chunks of {args.batch} rows, zstd Parquet, flush every 100 chunks)')
    print(f'analysis of {rows:,} rows ({torch.get_num_threads()} threads): load {load_s:.2f} s, '
          f'tables {analyze_s:.2f} s, total {load_s + analyze_s:.2f} s = '
          f'{rows / (load_s + analyze_s):,.0f} rows/s (median of {args.repeats})')


if __name__ == '__main__':
    main()
