"""The gs:// path on a loopback GCS emulator: prepare to a bucket, stream it back, train from it with
checkpoints and loss history saved to it.

Google's clients reach the emulator through ``STORAGE_EMULATOR_HOST`` and authenticate through the
standard ``GOOGLE_APPLICATION_CREDENTIALS`` file (see ``tests/gcs_emulator.py``), so the processes that
Composer's uploader spawns find it as well.
"""

from __future__ import annotations

import pytest
import torch

from conftest import SMALL
from reweigh.cli.analysis import load_history
from reweigh.cli.main import main
from reweigh.pipeline import SampleLookup, build_train_dataloader, prepare_default_corpus
from test_train_cli import TINY_CPU, _overrides

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _objects(prefix: str) -> list[str]:
    from google.cloud import storage

    return sorted(blob.name for blob in storage.Client().list_blobs('reweigh', prefix=prefix))


def _batches(loader):
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def test_prepare_to_gcs_and_stream_back_equals_local(small_dataset, gcs_env, tmp_path):
    root, local = small_dataset
    remote = 'gs://reweigh/small'
    result = prepare_default_corpus(remote, **SMALL)
    assert result.manifest.fingerprint == local.manifest.fingerprint
    keys = _objects('small/')
    assert {'small/manifest.json', 'small/train/code/index.json', 'small/val/docs/index.json',
            'small/tokenizer/tokenizer.json'} <= set(keys)
    assert any(k.endswith('.mds.zstd') for k in keys)
    assert prepare_default_corpus(remote, **SMALL).skipped

    from_gcs = _batches(build_train_dataloader(remote, tmp_path / 'cache', batch_size=8, seed=5))
    from_disk = _batches(build_train_dataloader(root, tmp_path / 'disk', batch_size=8, seed=5))
    assert len(from_gcs) == len(from_disk) > 10
    for a, b in zip(from_gcs, from_disk):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sids = from_gcs[0]['sample_id'].tolist()
    assert [SampleLookup(remote, tmp_path / 'lookup').text(s) for s in sids] == \
        [SampleLookup(root).text(s) for s in sids]


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
    keys = _objects('runs/gcs/')
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
