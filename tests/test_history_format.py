"""The history's part files on their own (no trainer): resuming at a step drops what an interrupted attempt wrote
past it, rewriting a part that straddles the step, and warns about a part it cannot read."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reweigh.history.format import truncate_history


def test_truncate_history_rewrites_straddling_parts_and_removes_later_ones(tmp_path):
    def part(first, last):
        steps = list(range(first, last + 1))
        table = pa.table({'step': pa.array(steps, pa.int64())})
        pq.write_table(table, tmp_path / f'part-{first:09d}-{last:09d}.parquet')

    part(0, 4)
    part(5, 9)
    part(10, 12)
    (tmp_path / '.part-000000013-000000014.parquet.tmp').write_bytes(b'partial')
    assert truncate_history(tmp_path, 7) == 3 + 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['part-000000000-000000004.parquet', 'part-000000005-000000009.parquet']
    assert pq.read_table(tmp_path / names[1]).column('step').to_pylist() == [5, 6]


def test_truncate_history_warns_about_an_unreadable_part(tmp_path):
    (tmp_path / 'part-000000000-000000009.parquet').write_bytes(b'PAR1 not really parquet')
    with pytest.warns(UserWarning, match='unreadable'):
        assert truncate_history(tmp_path, 5) == 0
