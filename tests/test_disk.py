"""A disk that fills up during `reweigh train` (a small tmpfs mount holding the run folder): the run stops with one
line naming the path and what was being written, no part file is left half-written under a name readers take, and
once space is freed the same command resumes and the history has every step once.

Needs root (to mount); skipped where it cannot mount.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pyarrow.dataset as pads
import pytest
from test_train_cli import TINY_CPU, _overrides

from reweigh.analysis.runs import parse_metrics
from reweigh.history.format import is_readable, list_parts
from reweigh.train.disk import disk_full_message

STEPS = 60


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs at ``tmp_path/disk``, unmounted afterwards; ``resize(mib)`` frees space."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip('mounting a small filesystem needs root')

    def resize(mib: int) -> None:
        subprocess.run(['mount', '-o', f'remount,size={mib}m', str(disk)], check=True)

    yield disk, resize
    subprocess.run(['umount', '-l', str(disk)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_once_space_is_freed(small_dataset, small_disk):
    data_root, _ = small_dataset
    disk, resize = small_disk
    run_dir = disk / 'run'
    command = [sys.executable, '-m', 'reweigh.cli.train', str(TINY_CPU), *_overrides(
        data_root, run_dir, max_duration=f'{STEPS}ba', eval_interval=f'{STEPS}ba', save_interval='4ba',
        save_num_checkpoints_to_keep='-1', **{'history.flush_interval': '2ba'})]

    full = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    assert 'Traceback' not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith('reweigh train: error:')]
    assert errors == [f'reweigh train: error: no space left on the device of {run_dir / "checkpoints"} while writing '
                      'a checkpoint; free space there and run the same command to resume'], full.stderr[-3000:]
    parts = list_parts(run_dir / 'history' / 'rank0')
    assert parts and max(p.last for p in parts) < STEPS - 1  # it stopped early
    assert all(is_readable(p.path) for p in parts)  # what readers take for a part is whole

    resize(64)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'is from an interrupted save' in resumed.stderr  # the checkpoint the disk cut short, set aside
    history = pads.dataset(str(run_dir / 'history'), format='parquet').to_table().to_pandas()
    assert history.groupby('step').size().to_dict() == {step: 8 for step in range(STEPS)}  # every step once
    train = [r['step'] for r in parse_metrics((run_dir / 'metrics.jsonl').read_text()) if r['kind'] == 'train']
    assert train == list(range(1, STEPS + 1))


def test_only_a_full_disk_is_reported_as_one():
    full = OSError(errno.ENOSPC, 'No space left on device')
    assert disk_full_message(full, {'a checkpoint': '/ckpt'}) == 'no space left on the device of /ckpt while writing the run'
    assert disk_full_message(OSError(errno.EACCES, 'Permission denied', '/ckpt/x'), {'a checkpoint': '/ckpt'}) is None
    assert disk_full_message(RuntimeError('unexpected pos 1 vs 2'), {'a checkpoint': '/ckpt'}) is None  # not torch's
