"""reweigh.pipeline over object storage: moto's S3 server on loopback, reached through S3_ENDPOINT_URL."""

from __future__ import annotations

import boto3
import pytest
import torch

from conftest import SMALL
from reweigh.pipeline import SampleLookup, build_eval_dataloaders, build_train_dataloader, prepare_default_corpus

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _batches(loader):
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def test_prepare_to_s3_and_stream_back_equals_local(small_dataset, s3_env, tmp_path, capsys):
    root, local = small_dataset
    remote = 's3://reweigh/small'
    result = prepare_default_corpus(remote, **SMALL)
    assert result.manifest.fingerprint == local.manifest.fingerprint
    assert result.manifest.domains == local.manifest.domains
    keys = {o['Key'] for o in boto3.client('s3', endpoint_url=s3_env).list_objects_v2(Bucket='reweigh', Prefix='small/')['Contents']}
    assert {'small/manifest.json', 'small/train/code/index.json', 'small/val/docs/index.json',
            'small/documents/boilerplate.parquet', 'small/tokenizer/tokenizer.json'} <= keys
    assert any(k.endswith('.mds.zstd') for k in keys)

    assert prepare_default_corpus(remote, **SMALL).skipped
    assert 'nothing to do' in capsys.readouterr().err

    from_s3 = _batches(build_train_dataloader(remote, tmp_path / 'cache', batch_size=8, seed=5))
    from_disk = _batches(build_train_dataloader(root, tmp_path / 'disk', batch_size=8, seed=5))
    assert len(from_s3) == len(from_disk) > 10
    for a, b in zip(from_s3, from_disk):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    evals = build_eval_dataloaders(remote, tmp_path / 'cache', batch_size=8)
    assert {name: sum(len(b['sample_id']) for b in dl) for name, dl in evals.items()} == \
        {d.name: d.sequences['val'] for d in local.manifest.domains}

    sids = from_s3[0]['sample_id'].tolist()
    remote_lookup, local_lookup = SampleLookup(remote, tmp_path / 'lookup'), SampleLookup(root)
    assert [remote_lookup.text(s) for s in sids] == [local_lookup.text(s) for s in sids]
    assert [remote_lookup.documents(s) for s in sids] == [local_lookup.documents(s) for s in sids]


def test_missing_bucket_is_a_clear_error(s3_env, tmp_path):
    with pytest.raises(ValueError, match='remote s3://no-such-bucket/data is unreachable or not writable'):
        prepare_default_corpus('s3://no-such-bucket/data', **SMALL)
    with pytest.raises(FileNotFoundError, match='holds no prepared dataset'):
        build_train_dataloader('s3://reweigh/nothing-here', tmp_path / 'cache')
