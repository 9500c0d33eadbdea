"""reweigh.pipeline streaming: batches, determinism, mixing, mid-epoch resumption, eval loaders, corrupted shards."""

from __future__ import annotations

import collections
import itertools
import shutil

import pytest
import torch

from reweigh.pipeline import SampleLookup, build_eval_dataloaders, build_train_dataloader

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _ids(loader, limit=None):
    return [i for batch in itertools.islice(loader, limit) for i in batch['sample_id'].tolist()]


def test_batches_have_the_training_keys_shapes_and_dtypes(small_dataset, tmp_path):
    root, result = small_dataset
    batch = next(iter(build_train_dataloader(root, tmp_path, batch_size=4, seed=0)))
    seq_len = result.manifest.seq_len
    assert sorted(batch) == ['attention_mask', 'domain', 'input_ids', 'labels', 'sample_id']
    for key in ('input_ids', 'labels', 'attention_mask'):
        assert batch[key].shape == (4, seq_len) and batch[key].dtype == torch.int64
    for key in ('sample_id', 'domain'):
        assert batch[key].shape == (4,) and batch[key].dtype == torch.int64
    assert batch['input_ids'].max() < result.manifest.tokenizer['vocab_size']


def test_order_is_deterministic_for_a_seed_and_an_epoch_covers_train_once(small_dataset, tmp_path):
    root, result = small_dataset
    a = _ids(build_train_dataloader(root, tmp_path / 'a', batch_size=8, seed=3, drop_last=False))
    b = _ids(build_train_dataloader(root, tmp_path / 'b', batch_size=8, seed=3, drop_last=False))
    c = _ids(build_train_dataloader(root, tmp_path / 'c', batch_size=8, seed=4, drop_last=False))
    n_train = sum(d.sequences['train'] for d in result.manifest.domains)
    assert a == b and a != c
    assert len(a) == n_train and sorted(a) == sorted(c) and len(set(a)) == n_train
    assert a != sorted(a)


def test_domain_subset_and_proportions(small_dataset, tmp_path):
    root, result = small_dataset
    m = result.manifest
    only_docs = _ids(build_train_dataloader(root, tmp_path / 'd', domains=['docs'], batch_size=4, drop_last=False))
    assert len(only_docs) == m.domain('docs').sequences['train']
    assert set(SampleLookup(root).domain_names(only_docs)) == {'docs'}

    loader = build_train_dataloader(root, tmp_path / 'm', domains={'code': 1, 'docs': 1, 'boilerplate': 2},
                                    batch_size=8, seed=0)
    counts = collections.Counter(d for batch in loader for d in batch['domain'].tolist())
    total = sum(counts.values())
    assert abs(counts[2] / total - 0.5) < 0.02 and abs(counts[0] / total - 0.25) < 0.02
    with pytest.raises(ValueError, match="unknown domain 'web'"):
        build_train_dataloader(root, tmp_path / 'x', domains=['web'])
    with pytest.raises(ValueError, match='must be a number > 0'):
        build_train_dataloader(root, tmp_path / 'y', domains={'code': 0})


@pytest.mark.parametrize('k', [1, 7])
def test_resume_mid_epoch_neither_skips_nor_repeats(small_dataset, tmp_path, k):
    root, _ = small_dataset
    full = _ids(build_train_dataloader(root, tmp_path / 'full', batch_size=8, seed=11))
    first = build_train_dataloader(root, tmp_path / 'first', batch_size=8, seed=11)
    head = _ids(first, limit=k)
    state = first.state_dict()
    assert state['sample_in_epoch'] == 8 * k
    resumed = build_train_dataloader(root, tmp_path / 'resumed', batch_size=8, seed=11)
    resumed.load_state_dict(state)
    tail = _ids(resumed)
    assert len(head) == 8 * k and head + tail == full
    # Composer's checkpoint path: the dataset's own state_dict(num_samples, from_beginning).
    assert first.dataset.state_dict(8 * k, True)['sample_in_epoch'] == 8 * k


def test_eval_dataloaders_one_per_domain_over_val(small_dataset, tmp_path):
    root, result = small_dataset
    loaders = build_eval_dataloaders(root, tmp_path, batch_size=16)
    assert list(loaders) == result.manifest.domain_names
    for name, loader in loaders.items():
        info = result.manifest.domain(name)
        ids = _ids(loader)
        assert len(ids) == info.sequences['val']
        assert set(SampleLookup(root).domain_names(ids)) == {name}
        assert all((i >> 47) & 1 for i in ids)  # split bit: val


def test_corrupted_shard_gives_a_checksum_error(small_dataset, tmp_path):
    root, _ = small_dataset
    copy = tmp_path / 'copy'
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns('*.mds'))  # only the compressed shards
    shard = sorted((copy / 'train' / 'code').glob('*.mds.zstd'))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r'cannot read train of .*Checksum failure: .*shard\.00000\.mds\.zstd'):
        _ids(build_train_dataloader(copy, domains=['code'], batch_size=4, shuffle=False))
    with pytest.raises(ValueError, match='Checksum failure.*corrupted'):
        SampleLookup(copy).text(0)


def test_missing_dataset_and_remote_without_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match='no prepared dataset'):
        build_train_dataloader(tmp_path)
    with pytest.raises(ValueError, match='needs a local_cache'):
        build_train_dataloader('s3://bucket/data')
