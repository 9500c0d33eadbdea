"""``reweigh prepare``: tokenise named domains (or the embedded default corpus) into MDS shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'prepare',
        help='tokenise corpora into MDS shards (local folder or s3://, gs://, ...)',
        description='Tokenise and pack each domain into compressed MDS shards (train + held-out val per '
        'domain), with the tokenizer, a document table and manifest.json. Without --domain/--domains-file, '
        'the embedded default corpus (Python standard library code, its documentation, licence '
        'boilerplate) is used. Example: reweigh prepare --domain code=src/ --domain docs=notes.jsonl '
        '--out s3://bucket/data. With --engine spark the same dataset (same sequences and sample ids) is made '
        'by Spark executors.',
    )
    p.add_argument('--out', required=True, help='dataset root: local folder or remote URI (s3://..., gs://...)')
    p.add_argument('--domain', action='append', default=[], metavar='NAME=SPEC',
                   help='a domain: NAME=PATH (text/JSONL/Parquet file or folder) or NAME=hf:DATASET[:CONFIG][@SPLIT]; '
                   'repeatable')
    p.add_argument('--domains-file', metavar='YAML', help='YAML file with a "domains:" mapping of NAME: SPEC')
    p.add_argument('--text-field', default='text', help='field holding the text in JSONL/Parquet/datasets rows')
    p.add_argument('--tokenizer', help='Hugging Face tokenizer name or folder (default: train a byte-level BPE)')
    p.add_argument('--vocab-size', type=int, default=4096, help='vocabulary of the trained BPE (default 4096)')
    p.add_argument('--seq-len', type=int, default=256, help='tokens per packed sequence (default 256)')
    p.add_argument('--val-fraction', type=float, default=0.05, help='documents held out per domain (default 0.05)')
    p.add_argument('--max-bytes-per-domain', type=int, default=600_000,
                   help='default corpus only: bytes of text per domain (default 600000)')
    p.add_argument('--shard-size-limit', type=int, default=1 << 24, help='uncompressed bytes per shard')
    p.add_argument('--overwrite', action='store_true', help='replace whatever --out holds')
    p.add_argument('--engine', choices=('local', 'spark'), default='local',
                   help='local: this process (default); spark: Spark executors, the same dataset (needs reweigh[spark])')
    p.add_argument('--spark-master', metavar='URL',
                   help='Spark master for --engine spark (default: local[*]; spark://..., yarn, k8s://...)')
    p.add_argument('--tokenizer-sample-bytes', type=int, default=1 << 28, metavar='N',
                   help='--engine spark without --tokenizer: train the BPE on the driver on the first N bytes of '
                   'each domain (default 268435456)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(run=run, extra='composer')  # reweigh.integrations.extras


def run(args: argparse.Namespace) -> int:
    from reweigh.pipeline import load_domains_file, parse_domain_arg, prepare_dataset, prepare_default_corpus

    common = dict(seq_len=args.seq_len, val_fraction=args.val_fraction, shard_size_limit=args.shard_size_limit,
                  overwrite=args.overwrite, progress=False if args.no_progress else None, engine=args.engine,
                  spark_master=args.spark_master, tokenizer_sample_bytes=args.tokenizer_sample_bytes)
    try:
        domains = [parse_domain_arg(d, text_field=args.text_field) for d in args.domain]
        if args.domains_file:
            domains += load_domains_file(args.domains_file)
        if domains:
            result = prepare_dataset(domains, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                                     source='reweigh prepare ' + ' '.join(f'{d.name}={d.describe()}' for d in domains),
                                     **common)
        else:
            result = prepare_default_corpus(args.out, max_bytes_per_domain=args.max_bytes_per_domain,
                                            tokenizer=args.tokenizer, vocab_size=args.vocab_size, **common)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    m = result.manifest
    if not result.skipped:
        print(f'prepared {args.out}: {result.tokens} tokens in {result.seconds:.1f}s '
              f'({result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s)')
    print('domain\tindex\ttrain_seqs\tval_seqs\ttrain_tokens\tval_tokens')
    for d in m.domains:
        print(f'{d.name}\t{d.index}\t{d.sequences["train"]}\t{d.sequences["val"]}\t{d.tokens["train"]}\t{d.tokens["val"]}')
    return 0
