"""The Spark engine (``--engine spark``, pyspark in ``local[2]``) makes the local engine's dataset.

These tests skip when pyspark or Java is missing, unless ``REWEIGH_REQUIRE_SPARK=1`` (as ``.ci/run`` sets it
when it could provide both), where they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reweigh.cli.main import main

SETTINGS = dict(vocab_size=400, seq_len=48, shard_size_limit=1 << 12, progress=False)
"""Small shards and write tasks of 40 sequences, so every stream is written in several parts."""
IN_BUCKET = dict(SETTINGS, shard_size_limit=1 << 14, sequences_per_task=300)
"""Fewer, larger shards and parts where each is an upload to the emulator."""


@pytest.fixture(scope='module')
def spark(s3_endpoint):
    """One ``local[2]`` session for the module. Executors inherit the environment the JVM starts with, so the
    S3 emulator's is set first (Spark cannot change an executor's environment afterwards)."""
    from s3_emulator import emulator_env

    from reweigh.pipeline.spark_session import spark_session

    with pytest.MonkeyPatch.context() as mp:
        for key in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE'):
            mp.delenv(key, raising=False)
        for key, value in emulator_env(s3_endpoint).items():
            mp.setenv(key, value)
        try:
            session = spark_session('local[2]')
        except ValueError as e:
            if os.environ.get('REWEIGH_REQUIRE_SPARK') == '1':
                pytest.fail(f'REWEIGH_REQUIRE_SPARK=1 but: {e}')
            pytest.skip(str(e))
        yield session
        session.stop()


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """A multi-domain corpus in every input format: a folder of text files, a folder of JSONL, a Parquet file."""
    from reweigh.pipeline.corpus import default_corpus
    from reweigh.pipeline.sources import DomainSpec, iter_documents

    root = tmp_path_factory.mktemp('corpus')
    code, docs, boilerplate = ([d.text for d in iter_documents(spec)] for spec in default_corpus(max_bytes_per_domain=30_000))
    (root / 'code').mkdir()
    for i, text in enumerate(code):
        (root / 'code' / f'{i:03d}.py').write_text(text)
    (root / 'docs').mkdir()
    for part in range(3):
        rows = docs[part::3] + ([''] if part == 1 else [])  # an empty document is skipped, as locally
        (root / 'docs' / f'part{part}.jsonl').write_text(''.join(json.dumps({'body': t}) + '\n' for t in rows))
    pq.write_table(pa.table({'body': boilerplate}), root / 'boilerplate.parquet', row_group_size=7)
    return [DomainSpec('code', 'path', str(root / 'code'), text_field='body'),
            DomainSpec('docs', 'path', str(root / 'docs'), text_field='body'),
            DomainSpec('boilerplate', 'path', str(root / 'boilerplate.parquet'), text_field='body')]


@pytest.fixture(scope='module')
def prepared(spark, corpus, tmp_path_factory):
    """The corpus prepared by each engine (the Spark one trains its tokenizer on a sample covering it all)."""
    from reweigh.pipeline import prepare_dataset

    local, distributed = tmp_path_factory.mktemp('local') / 'data', tmp_path_factory.mktemp('spark') / 'data'
    prepare_dataset(corpus, local, **SETTINGS)
    result = prepare_dataset(corpus, distributed, engine='spark', sequences_per_task=40, **SETTINGS)
    return local, distributed, result


def _stream(lookup, domain, split):
    return [(int(s['sample_id']), s['input_ids'].tolist(), s['doc_ids'].tolist()) for s in lookup.samples(domain, split)]


def test_spark_engine_writes_the_local_engines_sequences_ids_and_documents(prepared):
    from reweigh.pipeline import SampleLookup

    local, distributed, result = prepared
    a, b = SampleLookup(local), SampleLookup(distributed)
    assert not result.skipped and b.manifest.config['engine'] == 'spark'
    assert a.manifest.domains == b.manifest.domains  # documents, sequences and tokens per split
    for d in a.manifest.domain_names:
        for split in ('train', 'val'):
            assert _stream(a, d, split) == _stream(b, d, split), f'{split}/{d}'
        assert pq.read_table(local / 'documents' / f'{d}.parquet').equals(
            pq.read_table(distributed / 'documents' / f'{d}.parquet'))
    index = json.loads((distributed / 'train' / 'code' / 'index.json').read_text())
    parts = {s['zip_data']['basename'].split('/')[0] for s in index['shards']}
    assert len(parts) >= 3, 'the stream should be written in several parts'
    assert (local / 'tokenizer' / 'tokenizer.json').read_bytes() == (distributed / 'tokenizer' / 'tokenizer.json').read_bytes()
    sid = int(next(b.samples('docs'))['sample_id'])
    assert b.text(sid) == a.text(sid) and b.documents(sid) == a.documents(sid)


def test_rerunning_finds_the_dataset(prepared, corpus):
    from reweigh.pipeline import prepare_dataset

    _, distributed, _ = prepared
    assert prepare_dataset(corpus, distributed, engine='spark', sequences_per_task=40, **SETTINGS).skipped


def test_spark_dataset_streams_and_trains(prepared, tmp_path, streaming_shm):
    from test_train_cli import TINY_CPU, _overrides

    from reweigh.pipeline import SampleLookup, build_train_dataloader

    _, distributed, _ = prepared
    manifest = SampleLookup(distributed).manifest
    loader = build_train_dataloader(distributed, batch_size=4, drop_last=False)
    seen = [int(i) for batch in loader for i in batch['sample_id']]
    expected = {sid for d in manifest.domain_names for sid, _, _ in _stream(SampleLookup(distributed), d, 'train')}
    assert sorted(seen) == sorted(expected)

    run = tmp_path / 'run'
    overrides = _overrides(distributed, run, max_duration='4ba', eval_interval='4ba', save_interval='4ba')
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    history = pa.concat_tables(pq.read_table(p) for p in sorted((run / 'history' / 'rank0').glob('*.parquet')))
    assert set(history['sample_id'].to_pylist()) <= expected and history.num_rows == 4 * 8


def test_spark_prepare_writes_to_a_bucket(prepared, corpus, tmp_path):
    from reweigh.pipeline import SampleLookup, prepare_dataset

    local, _, _ = prepared
    result = prepare_dataset(corpus, 's3://reweigh/spark-data', engine='spark', **IN_BUCKET)
    remote, a = SampleLookup('s3://reweigh/spark-data', tmp_path / 'cache'), SampleLookup(local)
    assert result.manifest.domains == a.manifest.domains
    for d in ('code', 'boilerplate'):
        assert _stream(remote, d, 'train') == _stream(a, d, 'train')


def test_spark_reads_inputs_from_a_bucket(prepared, corpus, tmp_path):
    from pathlib import Path

    from test_pipeline_remote import upload_corpus

    from reweigh.pipeline import DomainSpec, SampleLookup, prepare_dataset

    local, _, _ = prepared
    upload_corpus('s3', Path(corpus[0].location).parent, 'spark-inputs')
    remote = [DomainSpec(d.name, 'path', f's3://reweigh/spark-inputs/{Path(d.location).name}', text_field='body')
              for d in corpus]
    prepare_dataset(remote, tmp_path / 'data', engine='spark', **IN_BUCKET)
    a, b = SampleLookup(local), SampleLookup(tmp_path / 'data')
    for x, y in zip(a.manifest.domains, b.manifest.domains):
        assert (x.documents, x.sequences, x.tokens) == (y.documents, y.sequences, y.tokens)
        assert _stream(a, x.name, 'train') == _stream(b, y.name, 'train')
    assert b.documents(int(next(b.samples('docs'))['sample_id']))[0]['source'].startswith('s3://reweigh/spark-inputs/docs/')


def test_spark_curate_equals_local_curate(spark, small_dataset, tmp_path, capsys):
    from test_curate import _curate_run

    from reweigh.analysis.curation import Rules, select
    from reweigh.analysis.tables import analyze_history
    from reweigh.pipeline import SampleLookup
    from reweigh.pipeline.curate import curate_dataset

    run, root, manifest = _curate_run(tmp_path, small_dataset)
    rules = ['--drop-below', '0.5', '--min-visits', '2']
    assert main(['curate', str(run), '--out', str(tmp_path / 'local'), *rules]) == 0
    assert main(['curate', str(run), '--out', str(tmp_path / 'spark'), *rules, '--engine', 'spark',
                 '--report', str(tmp_path / 'report')]) == 0
    selection = select(analyze_history(run / 'history', windows=1, k=0, map_points=0).samples,
                       Rules(drop_below=0.5, min_visits=2), manifest.domain_names)
    parts = curate_dataset(str(root), str(tmp_path / 'parts'), selection.keeps, {'rules': 'test'}, engine='spark',
                           shards_per_task=2, progress=False)
    assert parts.kept['boilerplate']['samples'] < manifest.domain('boilerplate').sequences['train']
    a = SampleLookup(tmp_path / 'local')
    for other in ('spark', 'parts'):
        b = SampleLookup(tmp_path / other)
        assert a.manifest.domains == b.manifest.domains
        assert a.manifest.curation['kept'] == b.manifest.curation['kept']
        for d in manifest.domain_names:
            assert _stream(a, d, 'train') == _stream(b, d, 'train')
            assert pq.read_table(tmp_path / 'local' / 'curation' / f'{d}.parquet').equals(
                pq.read_table(tmp_path / other / 'curation' / f'{d}.parquet'))
    index = json.loads((tmp_path / 'parts' / 'train' / 'code' / 'index.json').read_text())
    assert len({s['zip_data']['basename'].split('/')[0] for s in index['shards']}) >= 2


def test_a_bad_input_read_by_an_executor_is_one_clear_error(spark, tmp_path, capsys):
    from reweigh.pipeline import train_bpe_tokenizer

    train_bpe_tokenizer(['some text'] * 10, vocab_size=300).save_pretrained(tmp_path / 'tok')  # no reading on the driver
    folder = tmp_path / 'web'
    folder.mkdir()
    (folder / 'a.jsonl').write_text('{"text": "fine"}\n{"text": "fine too"}\n')
    (folder / 'b.jsonl').write_text('{"text": "fine"}\nnot json\n')
    assert main(['prepare', '--domain', f'web={folder}', '--out', str(tmp_path / 'out'), '--engine', 'spark',
                 '--tokenizer', str(tmp_path / 'tok'), '--no-progress']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reweigh prepare: error: domain 'web':") and 'b.jsonl:2 is not valid JSON' in err
    assert len(err.splitlines()) == 1 and not (tmp_path / 'out').exists()
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'manifest.json').write_text('{}')  # an older, broken attempt: replaced, then removed
    assert main(['prepare', '--domain', f'web={folder}', '--out', str(tmp_path / 'out'), '--engine', 'spark',
                 '--tokenizer', str(tmp_path / 'tok'), '--no-progress', '--overwrite']) == 2
    assert 'b.jsonl:2 is not valid JSON' in capsys.readouterr().err and not (tmp_path / 'out').exists()


def _cli(args, env):
    code = 'import sys; from reweigh.cli.main import main; sys.exit(main(sys.argv[1:]))'
    return subprocess.run([sys.executable, '-c', code, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('missing', ['java', 'pyspark'])
def test_missing_java_or_pyspark_is_one_line_exit_2(tmp_path, missing):
    if missing == 'java':
        pytest.importorskip('pyspark')  # without it, that is the error
    env = {k: v for k, v in os.environ.items() if k != 'JAVA_HOME'}
    if missing == 'java':
        env['PATH'] = str(tmp_path)  # no java on it; python is run by its full path
    else:  # a pyspark that cannot be imported
        (tmp_path / 'pyspark').mkdir()
        (tmp_path / 'pyspark' / '__init__.py').write_text('raise ImportError("no pyspark here")\n')
        env['PYTHONPATH'] = str(tmp_path)
    done = _cli(['prepare', '--out', str(tmp_path / 'out'), '--engine', 'spark', '--max-bytes-per-domain', '5000',
                 '--no-progress'], env)
    assert done.returncode == 2, done.stderr
    wanted = 'needs a Java runtime (17 or newer)' if missing == 'java' else "pip install 'reweigh[spark]'"
    assert wanted in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / 'out').exists()
