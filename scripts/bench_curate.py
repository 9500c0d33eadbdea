"""Curate throughput: `reweigh curate` on a dataset of many short sequences, with a history that visits each once.

Prepares the default corpus with short sequences (many samples; once, in --work), writes a one-step history
that gives every training sample a pseudo-random weight, then times the command end to end (reading the
history, the rules, streaming the shards, writing the copy and the report) and the dataset copy alone, with
the local engine and, given ``--spark-master``, the Spark engine (its session started before the clock).

    .venv/bin/python scripts/bench_curate.py [--seq-len 16] [--bytes 3000000] [--work /tmp/reweigh-bench-curate]
        [--spark-master local[2]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reweigh.analysis import HISTORY_SCHEMA
from reweigh.cli.main import main
from reweigh.pipeline import make_sample_id
from reweigh.pipeline.curate import curate_dataset
from reweigh.pipeline.prepare import prepare_default_corpus


def _history(run: Path, manifest, seed: int = 0) -> int:
    ids = np.concatenate([[make_sample_id(d.index, 'train', j) for j in range(d.sequences['train'])]
                          for d in manifest.domains]).astype(np.int64)
    rel = np.random.default_rng(seed).lognormal(0.0, 0.5, len(ids))
    table = pa.table({
        'step': np.zeros(len(ids), np.int64), 'microbatch': np.zeros(len(ids), np.int16),
        'rank': np.zeros(len(ids), np.int16), 'sample_id': ids, 'domain': (ids >> 48).astype(np.int32),
        'tokens': np.full(len(ids), 16, np.int32), 'mix': np.full(len(ids), -1, np.int32), 'loss': np.ones(len(ids), np.float32),
        'weight': (rel / rel.sum()).astype(np.float32), 'r': np.ones(len(ids), np.float32),
        'active': np.ones(len(ids), bool)}, schema=HISTORY_SCHEMA)
    (run / 'history' / 'rank0').mkdir(parents=True, exist_ok=True)
    pq.write_table(table, run / 'history' / 'rank0' / 'part-000000000-000000000.parquet')
    return len(ids)


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seq-len', type=int, default=16)
    parser.add_argument('--bytes', type=int, default=3_000_000, help='text per domain')
    parser.add_argument('--work', default='/tmp/reweigh-bench-curate')
    parser.add_argument('--spark-master', help='also time the Spark engine on this master, e.g. local[2]')
    args = parser.parse_args()
    work = Path(args.work)
    data = work / 'data'
    prepared = prepare_default_corpus(data, max_bytes_per_domain=args.bytes, seq_len=args.seq_len, progress=False)
    run = work / 'run'
    shutil.rmtree(run, ignore_errors=True)
    samples = _history(run, prepared.manifest)
    (run / 'summary.json').write_text(json.dumps({'history': str(run / 'history'), 'dataset': str(data)}))

    out = work / 'curated'
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    assert main(['curate', str(run), '--out', str(out), '--drop-below', '0.8', '--report', str(work / 'report')]) == 0
    command_s = time.perf_counter() - start

    def copy(**engine) -> float:
        copies = []
        for _ in range(3):
            shutil.rmtree(out, ignore_errors=True)
            result = curate_dataset(str(data), str(out), lambda sid: sid % 2 == 0, {}, progress=False, **engine)
            copies.append(result.seconds)
        return sorted(copies)[1]

    copy_s = copy()
    print(f'\ncurate throughput, {samples:,} training samples of {args.seq_len} tokens ({os.cpu_count()} CPUs):')
    print(f'  reweigh curate (history, rules, copy, report): {command_s:.2f} s, {samples / command_s:,.0f} samples/s')
    print(f'  curate_dataset alone (median of 3):             {copy_s:.2f} s, {samples / copy_s:,.0f} samples/s')
    if args.spark_master:
        from reweigh.pipeline.spark_session import spark_session

        spark_session(args.spark_master)
        spark_s = copy(engine='spark', spark_master=args.spark_master)
        print(f'  curate_dataset alone, spark {args.spark_master} (median of 3): {spark_s:.2f} s, '
              f'{samples / spark_s:,.0f} samples/s, {copy_s / spark_s:.2f}x the local engine')


if __name__ == '__main__':
    main_()
