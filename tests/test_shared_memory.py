"""Datasets give their Streaming shared memory back when closed, so one process can build and train many times."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from reweigh.pipeline import ReweighStreamingDataset, build_eval_dataloaders, build_train_dataloader
from reweigh.pipeline.shared_memory import close_dataset, closing_datasets

SHM = '/dev/shm'
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason='needs POSIX shared memory in /dev/shm')


def _descriptors() -> int:
    return len(os.listdir('/proc/self/fd'))


def _segments() -> set[str]:
    return set(os.listdir(SHM))


def test_building_and_reading_again_and_again_holds_no_more_descriptors_or_segments(small_dataset, streaming_shm):
    root, _ = small_dataset
    before = _segments()
    counts = []
    for _ in range(5):  # as a training run does: training and validation datasets, all open at once
        with closing_datasets():
            loader = build_train_dataloader(root, batch_size=4, seed=1)
            next(iter(loader))
            for name, val in build_eval_dataloaders(root, batch_size=4).items():
                if name == 'code':
                    next(iter(val))
            assert len(_segments() - before) >= 4 * 6
        assert _segments() - before == set()
        counts.append(_descriptors())
    # Streaming alone holds every dataset's segments, and each later dataset keeps a descriptor to each of them:
    # hundreds more descriptors per round here, growing every round.
    assert max(counts) - counts[0] <= 2, counts


def test_close_stops_a_dataset_mid_epoch_and_is_idempotent(small_dataset, streaming_shm):
    root, _ = small_dataset
    before = _segments()
    dataset = ReweighStreamingDataset(root, batch_size=4)
    samples = iter(dataset)
    next(samples)  # its reading threads are running now
    assert not dataset.closed
    dataset.close()
    assert dataset.closed and _segments() - before == set()
    assert all(not t.is_alive() for t in dataset._executor._threads)
    dataset.close()
    assert dataset.closed


def _close_in_child(dataset: ReweighStreamingDataset, result) -> None:
    close_dataset(dataset)
    result.put(dataset.closed)


def test_a_copy_in_another_process_gives_nothing_back(small_dataset, streaming_shm):
    root, _ = small_dataset
    before = _segments()
    dataset = ReweighStreamingDataset(root, batch_size=4)
    mine = _segments() - before
    context = multiprocessing.get_context('fork')  # as a dataloader worker gets it
    result = context.Queue()
    child = context.Process(target=_close_in_child, args=(dataset, result))
    child.start()
    closed_there = result.get(timeout=60)
    child.join(60)
    assert closed_there is False and child.exitcode == 0
    assert mine and mine <= _segments()
    sample = dataset[0]  # still readable here
    assert int(sample['sample_id']) >= 0
    dataset.close()
    assert _segments() - before == set()


def test_training_in_process_twice_leaves_no_shared_memory(small_dataset, streaming_shm, tmp_path, capsys):
    from test_train_cli import TINY_CPU, _overrides

    from reweigh.cli.main import main

    root, _ = small_dataset
    before = _segments()
    counts = []
    for run in ('a', 'b'):
        assert main(['train', str(TINY_CPU), *_overrides(root, tmp_path / run, max_duration='2ba')]) == 0
        assert _segments() - before == set()
        counts.append(_descriptors())
    assert counts[1] - counts[0] <= 8, counts
