"""Throughput of ``prepare_dataset`` with the local engine and the Spark engine on the same corpus.

The corpus is foreign to the project: text files of this machine, as three domains of at most
``--mb-per-domain`` MB each, taken in sorted path order: ``code`` (the Python standard library's modules),
``licences`` (Debian's ``/usr/share/doc/*/copyright``, highly redundant) and ``docs`` (the rest of
``/usr/share/doc`` that is not compressed). A byte-level BPE of 4096 tokens is trained once on 2 MB of each
domain and given to both engines, so what is timed is reading, tokenising, packing (seq_len 1024), zstd +
hashes and writing; tokens written / wall seconds of the whole ``prepare_dataset`` call. The Spark engine
runs in a session started before the clock (its JVM start is reported apart), once per ``--masters``
entry. Both outputs are checked to hold the same sequences (every domain's counts, and 200 random
samples compared token for token).

Usage: python scripts/bench_spark.py [--mb-per-domain 10] [--masters local[1],local[2]]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from reweigh.pipeline import SampleLookup, prepare_dataset
from reweigh.pipeline.corpus import stdlib_dir
from reweigh.pipeline.sources import DomainSpec, iter_documents
from reweigh.pipeline.spark_session import spark_session
from reweigh.pipeline.tokenizer import train_bpe_tokenizer


def _files(pattern_root: Path, keep, limit: int) -> list[Path]:
    chosen, used = [], 0
    for path in sorted(p for p in pattern_root.rglob('*') if p.is_file() and not p.is_symlink() and keep(p)):
        try:
            size = len(path.read_text(encoding='utf-8').encode())
        except (UnicodeDecodeError, OSError):
            continue
        if used + size > limit:
            break
        chosen.append(path)
        used += size
    return chosen


def _corpus(root: Path, limit: int) -> list[DomainSpec]:
    lib = stdlib_dir()
    picks = {
        'code': _files(lib, lambda p: p.suffix == '.py' and 'site-packages' not in p.parts, limit),
        'licences': _files(Path('/usr/share/doc'), lambda p: p.name == 'copyright', limit),
        'docs': _files(Path('/usr/share/doc'), lambda p: p.name != 'copyright' and p.suffix != '.gz', limit),
    }
    specs = []
    for name, files in picks.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i, path in enumerate(files):
            (folder / f'{i:06d}{path.suffix}').symlink_to(path)
        specs.append(DomainSpec(name, 'path', str(folder)))
    return specs


def _check_same(a: str, b: str) -> None:
    la, lb = SampleLookup(a), SampleLookup(b)
    if la.manifest.domains != lb.manifest.domains:
        raise SystemExit('the engines disagree on the counts per domain')
    rng = random.Random(0)
    ids = [int(s['sample_id']) for d in la.manifest.domain_names for s in la.samples(d, 'train')]
    for sid in rng.sample(ids, min(200, len(ids))):
        if la.tokens(sid).tolist() != lb.tokens(sid).tolist():
            raise SystemExit(f'the engines disagree on sample {sid}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb-per-domain', type=float, default=10)
    parser.add_argument('--masters', default='local[1],local[2]')
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='reweigh-bench-spark-'))
    domains = _corpus(tmp / 'corpus', int(args.mb_per_domain * 1e6))
    sample, used = [], {}
    for spec in domains:
        for doc in iter_documents(spec):
            if used.get(spec.name, 0) > 2_000_000:
                break
            sample.append(doc.text)
            used[spec.name] = used.get(spec.name, 0) + len(doc.text)
    tok = train_bpe_tokenizer(sample, vocab_size=4096)
    tok.save_pretrained(str(tmp / 'tokenizer'))
    settings = dict(tokenizer=str(tmp / 'tokenizer'), seq_len=1024, progress=False)
    mb = sum(os.path.getsize(p) for spec in domains for p in Path(spec.location).iterdir()) / 1e6
    print(f'corpus: {mb:.1f} MB of text in {sum(len(list(Path(s.location).iterdir())) for s in domains)} files, '
          f'{os.cpu_count()} cores')
    rows = []
    result = prepare_dataset(domains, tmp / 'local', **settings)
    rows.append(('local engine', result.tokens, result.seconds, None))
    for master in args.masters.split(','):
        start = time.perf_counter()
        spark = spark_session(master)
        started = time.perf_counter() - start
        out = tmp / f'spark-{master}'
        result = prepare_dataset(domains, out, engine='spark', spark_master=master, **settings)
        spark.stop()
        _check_same(str(tmp / 'local'), str(out))
        rows.append((f'spark engine, {master}', result.tokens, result.seconds, started))
    base = rows[0][1] / rows[0][2]
    print('\n| engine | tokens | seconds | tokens/s | vs local | JVM start (s, not in seconds) |\n|---|---|---|---|---|---|')
    for name, tokens, seconds, started in rows:
        rate = tokens / seconds
        print(f'| {name} | {tokens:,} | {seconds:.1f} | {rate:,.0f} | {rate / base:.2f}x | '
              f'{"" if started is None else f"{started:.1f}"} |')
    print('\nthe engines wrote the same sequences (counts per domain, 200 random samples token for token)')
    print(f'outputs in {tmp}', file=sys.stderr)


if __name__ == '__main__':
    main()
