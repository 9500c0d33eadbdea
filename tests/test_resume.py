"""Checkpoint folders left behind by a save that was interrupted (safety/checkpoints.py)."""

from reweigh.safety.checkpoints import set_aside_interrupted_checkpoints


def _touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b'x')


def test_only_this_ranks_checkpoints_after_latest_are_set_aside(tmp_path):
    _touch(tmp_path, 'ep0-ba5-rank0.pt', 'ep0-ba10-rank0.pt', 'ep1-ba15-rank0.pt', 'ep0-ba10-rank1.pt', 'notes.txt')
    (tmp_path / 'latest-rank0.pt').symlink_to('ep0-ba5-rank0.pt')
    moved = set_aside_interrupted_checkpoints(tmp_path, rank=0)
    assert [p.name for p in moved] == ['ep0-ba10-rank0.pt.interrupted', 'ep1-ba15-rank0.pt.interrupted']
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'ep0-ba10-rank0.pt.interrupted', 'ep0-ba10-rank1.pt', 'ep0-ba5-rank0.pt', 'ep1-ba15-rank0.pt.interrupted',
        'latest-rank0.pt', 'notes.txt',
    ]
    assert set_aside_interrupted_checkpoints(tmp_path, rank=0) == []  # idempotent


def test_without_a_latest_symlink_every_checkpoint_is_unvouched(tmp_path):
    _touch(tmp_path, 'ep0-ba5-rank0.pt')
    assert [p.name for p in set_aside_interrupted_checkpoints(tmp_path, rank=0)] == ['ep0-ba5-rank0.pt.interrupted']


def test_a_latest_that_is_not_a_symlink_or_a_missing_folder_is_left_alone(tmp_path):
    _touch(tmp_path, 'ep0-ba5-rank0.pt', 'ep0-ba10-rank0.pt', 'latest-rank0.pt')
    assert set_aside_interrupted_checkpoints(tmp_path, rank=0) == []
    assert set_aside_interrupted_checkpoints(tmp_path / 'absent', rank=0) == []
