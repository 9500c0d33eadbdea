"""reweigh.pipeline over object storage, on loopback emulators: moto's S3 server (reached through
S3_ENDPOINT_URL) and a GCS emulator (reached through STORAGE_EMULATOR_HOST, authenticated through the
standard GOOGLE_APPLICATION_CREDENTIALS file; see ``tests/gcs_emulator.py``), so that the processes
Composer's uploader spawns find them as well.
"""

from __future__ import annotations

import os

import boto3
import pytest
import torch
from conftest import SMALL
from test_train_cli import TINY_CPU, _overrides

from reweigh.analysis import load_history
from reweigh.cli.main import main
from reweigh.pipeline import SampleLookup, build_eval_dataloaders, build_train_dataloader, prepare_default_corpus
from reweigh.pipeline.ids import make_sample_id

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _s3_keys(prefix: str) -> list[str]:
    client = boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL'])
    return sorted(o['Key'] for o in client.list_objects_v2(Bucket='reweigh', Prefix=prefix)['Contents'])


def _gcs_keys(prefix: str) -> list[str]:
    from google.cloud import storage

    return sorted(blob.name for blob in storage.Client().list_blobs('reweigh', prefix=prefix))


STORES = {'s3': ('s3_env', _s3_keys), 'gs': ('gcs_env', _gcs_keys)}


def _batches(loader):
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


@pytest.mark.parametrize('scheme', sorted(STORES))
def test_prepare_to_object_storage_and_stream_back_equals_local(scheme, small_dataset, tmp_path, capsys, request):
    env_fixture, list_keys = STORES[scheme]
    request.getfixturevalue(env_fixture)
    root, local = small_dataset
    remote = f'{scheme}://reweigh/small'
    result = prepare_default_corpus(remote, **SMALL)
    assert result.manifest.fingerprint == local.manifest.fingerprint
    assert result.manifest.domains == local.manifest.domains
    keys = list_keys('small/')
    assert {'small/manifest.json', 'small/train/code/index.json', 'small/val/docs/index.json',
            'small/documents/boilerplate.parquet', 'small/tokenizer/tokenizer.json'} <= set(keys)
    assert any(k.endswith('.mds.zstd') for k in keys)

    assert prepare_default_corpus(remote, **SMALL).skipped
    assert 'nothing to do' in capsys.readouterr().err

    from_remote = _batches(build_train_dataloader(remote, tmp_path / 'cache', batch_size=8, seed=5))
    from_disk = _batches(build_train_dataloader(root, tmp_path / 'disk', batch_size=8, seed=5))
    assert len(from_remote) == len(from_disk) > 10
    for a, b in zip(from_remote, from_disk):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    evals = build_eval_dataloaders(remote, tmp_path / 'cache', batch_size=8)
    assert {name: sum(len(b['sample_id']) for b in dl) for name, dl in evals.items()} == \
        {d.name: d.sequences['val'] for d in local.manifest.domains}

    sids = from_remote[0]['sample_id'].tolist()
    remote_lookup, local_lookup = SampleLookup(remote, tmp_path / 'lookup'), SampleLookup(root)
    assert [remote_lookup.text(s) for s in sids] == [local_lookup.text(s) for s in sids]
    assert [remote_lookup.documents(s) for s in sids] == [local_lookup.documents(s) for s in sids]


def upload_corpus(scheme: str, folder, prefix: str) -> None:
    """Upload every file under ``folder`` to ``{scheme}://reweigh/{prefix}/...`` with Streaming's uploader."""
    from reweigh.io import objects

    files = [str(p.relative_to(folder)) for p in sorted(folder.rglob('*')) if p.is_file()]
    objects.upload(str(folder), f'{scheme}://reweigh/{prefix}', files)


@pytest.mark.parametrize('scheme', sorted(STORES))
def test_inputs_in_object_storage_give_the_dataset_of_the_same_files_on_disk(scheme, tmp_path, capsys, request):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from reweigh.pipeline import parse_domain_arg, prepare_dataset

    request.getfixturevalue(STORES[scheme][0])
    web = tmp_path / 'inputs' / 'web'
    (web / 'pages').mkdir(parents=True)
    (web / 'a.txt').write_text('plain text page\n' * 40)
    (web / 'pages' / 'b.jsonl').write_text(''.join(json.dumps({'text': f'row {i} ' * 30}) + '\n' for i in range(9)))
    pq.write_table(pa.table({'text': [f'parquet row {i} ' * 20 for i in range(7)]}), web / 'c.parquet')
    for folder, text in (('d', 'in d/ '), ('d-e', 'in d-e/ ')):  # d/ before d-e/ on disk, not as plain strings
        (web / folder).mkdir()
        (web / folder / 'x.txt').write_text(text * 50)
    (web / '.hidden').write_text('never read')
    (tmp_path / 'inputs' / 'web2').mkdir()
    (tmp_path / 'inputs' / 'web2' / 'x.txt').write_text('a sibling prefix, never read')
    upload_corpus(scheme, tmp_path / 'inputs', 'inputs')
    settings = dict(vocab_size=300, seq_len=32, progress=False)

    disk = prepare_dataset([parse_domain_arg(f'web={web}')], tmp_path / 'disk', **settings)
    remote = prepare_dataset([parse_domain_arg(f'web={scheme}://reweigh/inputs/web')], tmp_path / 'remote', **settings)
    assert remote.manifest.domains[0].sequences == disk.manifest.domains[0].sequences
    a, b = SampleLookup(tmp_path / 'disk'), SampleLookup(tmp_path / 'remote')
    for split in ('train', 'val'):
        assert [s['input_ids'].tolist() for s in a.samples('web', split)] == \
            [s['input_ids'].tolist() for s in b.samples('web', split)]
    sources = pq.read_table(tmp_path / 'remote' / 'documents' / 'web.parquet')['source'].to_pylist()
    assert sources[0] == f'{scheme}://reweigh/inputs/web/a.txt' and sources[-1] == f'{scheme}://reweigh/inputs/web/pages/b.jsonl:9'

    assert main(['prepare', '--domain', f'web={scheme}://reweigh/inputs/nothing', '--out', str(tmp_path / 'x')]) == 2
    assert "input 's3://reweigh/inputs/nothing' does not exist" in capsys.readouterr().err.replace(scheme + '://', 's3://')


def test_missing_bucket_is_a_clear_error(s3_env, tmp_path):
    with pytest.raises(ValueError, match='remote s3://no-such-bucket/data is unreachable or not writable'):
        prepare_default_corpus('s3://no-such-bucket/data', **SMALL)
    with pytest.raises(FileNotFoundError, match='holds no prepared dataset'):
        build_train_dataloader('s3://reweigh/nothing-here', tmp_path / 'cache')


def test_train_from_gcs_with_gcs_save_folder(gcs_env, tmp_path):
    remote = 'gs://reweigh/train-data'
    assert main(['prepare', '--out', remote, '--max-bytes-per-domain', '40000', '--vocab-size', '512',
                 '--seq-len', '64', '--no-progress']) == 0
    overrides = _overrides(
        tmp_path / 'cache', tmp_path / 'run', run_name='gcs', save_folder='gs://reweigh/runs/{run_name}/checkpoints',
        autoresume='false', max_duration='4ba', eval_interval='4ba', save_interval='2ba',
    ) + [f'train_loader.dataset.remote={remote}', f'eval_loader.dataset.remote={remote}',
         f'eval_loader.dataset.local={tmp_path / "eval-cache"}']
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    keys = _gcs_keys('runs/gcs/')
    assert 'runs/gcs/checkpoints/ep0-ba4-rank0.pt' in keys
    assert [k for k in keys if '/history/' in k] == [
        'runs/gcs/history/rank0/part-000000000-000000001.parquet',
        'runs/gcs/history/rank0/part-000000002-000000003.parquet',
    ]
    # `reweigh analyze gs://...` reads through pyarrow's GcsFileSystem, whose ranged reads hang against
    # this emulator; read the uploaded parts back with Google's client instead.
    from google.cloud import storage

    local = tmp_path / 'downloaded' / 'rank0'
    local.mkdir(parents=True)
    for key in (k for k in keys if '/history/' in k):
        storage.Client().bucket('reweigh').blob(key).download_to_filename(str(local / key.rsplit('/', 1)[1]))
    history = load_history(str(local.parent))
    assert len(history) == 4 * 8 and sorted(set(history['step'].to_pylist())) == [0, 1, 2, 3]


@pytest.mark.parametrize('damage', ['flipped-byte', 'truncated'])
def test_a_damaged_shard_in_the_bucket_is_one_clear_error_naming_it(damage, small_dataset, s3_env, tmp_path, capsys):
    """A shard corrupted or cut short in object storage: streaming, lookups and training stop with one
    error that names the shard, instead of a silently shortened epoch or a hang."""
    root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=s3_env)
    prefix = f'damaged-{damage}'
    for path in root.rglob('*'):
        if path.is_file() and not path.name.endswith('.mds'):  # a bucket holds the compressed shards only
            client.upload_file(str(path), 'reweigh', f'{prefix}/{path.relative_to(root).as_posix()}')
    key = f'{prefix}/train/code/shard.00001.mds.zstd'
    data = client.get_object(Bucket='reweigh', Key=key)['Body'].read()
    if damage == 'flipped-byte':
        data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    else:
        data = data[: len(data) // 2]
    client.put_object(Bucket='reweigh', Key=key, Body=data)
    remote = f's3://reweigh/{prefix}'

    with pytest.raises(ValueError, match=r'cannot read train of s3://.*Checksum failure: .*code/shard\.00001\.mds\.zstd'):
        _batches(build_train_dataloader(remote, tmp_path / 'cache', domains=['code'], batch_size=4, shuffle=False))
    lookup = SampleLookup(remote, tmp_path / 'lookup')
    with pytest.raises(ValueError, match=r'Checksum failure: .*code/shard\.00001\.mds\.zstd.*corrupted'):
        [lookup.text(make_sample_id(0, 'train', i)) for i in range(200)]

    overrides = _overrides(tmp_path / 'train-cache', tmp_path / 'run', max_duration='1ep', eval_interval='1ep',
                           save_interval='1ep', **{'eval_loader': 'null', 'train_loader.dataset.proportions': '{code: 1}'})
    assert main(['train', str(TINY_CPU), *overrides, f'train_loader.dataset.remote={remote}']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert [line for line in err.splitlines() if 'error:' in line] == [
        line for line in err.splitlines() if 'error:' in line and 'Checksum failure' in line and 'shard.00001.mds.zstd' in line
    ] != []
