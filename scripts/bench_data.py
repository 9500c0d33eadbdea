"""Throughput of the data pipeline on this machine: prepare (tokens/s), streaming (samples/s) local and S3.

Prepare: ``prepare_default_corpus`` (default settings: 3 domains x 0.6 MB, 4096-token BPE trained on the
corpus, seq_len 256) into a fresh folder, wall time of the whole call (reading, BPE training, tokenising,
packing, zstd + hashes, writing); tokens written / seconds. Streaming: one full epoch of the train split
(shuffle on, batch 32, num_workers 0, main process, dataset construction included): local shards read in
place (the first epoch decompresses them), copied into a fresh cache each epoch, and written to moto's
S3 server on loopback and streamed through ``S3_ENDPOINT_URL`` into a fresh cache each epoch (downloads
included). Each number is the median of
``--repeats`` runs.

Usage: python scripts/bench_data.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from streaming.base.util import clean_stale_shared_memory

from reweigh.pipeline import build_train_dataloader, prepare_default_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))  # the S3 emulator is a test helper, not shipped
from s3_emulator import emulator_env, s3_emulator  # noqa: E402


def _epoch(root: str, cache: str | None) -> tuple[int, float]:
    clean_stale_shared_memory()
    start = time.perf_counter()
    loader = build_train_dataloader(root, cache, batch_size=32, seed=0, drop_last=False)
    n = sum(len(batch['sample_id']) for batch in loader)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates = []
        for r in range(args.repeats):
            result = prepare_default_corpus(os.path.join(tmp, f'prep{r}'), progress=False)
            rates.append(result.tokens / result.seconds)
        root = os.path.join(tmp, 'prep0')
        print(f'prepare: {statistics.median(rates):,.0f} tokens/s (median of {args.repeats}; '
              f'{result.tokens:,} tokens, {sum(sum(d.sequences.values()) for d in result.manifest.domains):,} '
              f'sequences of {result.manifest.seq_len})')

        local = [_epoch(root, None) for _ in range(args.repeats)]
        print(f'stream local: {statistics.median(n / s for n, s in local):,.0f} samples/s '
              f'(median of {args.repeats} epochs of {local[0][0]} samples, in place)')
        cached = [_epoch(root, os.path.join(tmp, f'lcache{r}')) for r in range(args.repeats)]
        print(f'stream local->cache: {statistics.median(n / s for n, s in cached):,.0f} samples/s '
              f'(median of {args.repeats}; shards copied to a fresh cache each epoch)')

        with s3_emulator(buckets=['bench']) as url:
            os.environ.update(emulator_env(url))
            start = time.perf_counter()
            s3_result = prepare_default_corpus('s3://bench/default', progress=False)
            s3_prep = s3_result.tokens / (time.perf_counter() - start)
            print(f'prepare -> S3: {s3_prep:,.0f} tokens/s (one run, uploads included)')
            remote = [_epoch('s3://bench/default', os.path.join(tmp, f's3cache{r}')) for r in range(args.repeats)]
            print(f'stream S3 (moto, loopback): {statistics.median(n / s for n, s in remote):,.0f} samples/s '
                  f'(median of {args.repeats} epochs, fresh cache each: downloads included)')


if __name__ == '__main__':
    main()
