"""The parallel packing of the Spark engine cuts and joins exactly the sequences of the one-pass packer."""

from __future__ import annotations

import numpy as np
import pytest

from reweigh.pipeline.packing import SequencePacker, cut_pieces, join_pieces


def _one_pass(docs, seq_len):
    packer = SequencePacker(seq_len, eos_id=0)
    out = [seq for doc_id, ids in docs for seq in packer.add(doc_id, ids)] + packer.finish()
    return [(seq.tolist(), doc_ids) for seq, doc_ids in out]


def _in_runs(docs, cuts, seq_len):
    """Pack ``docs`` cut into runs at ``cuts`` as the Spark engine does: each run from its offset, then join."""
    runs = [docs[a:b] for a, b in zip([0, *cuts], [*cuts, len(docs)])]
    offset, by_index = 0, {}
    for run in runs:
        for piece in cut_pieces(run, offset, seq_len, eos_id=0):
            by_index.setdefault(piece.index, []).append(piece)
        offset += sum(len(ids) + 1 for _, ids in run)
    joined = [join_pieces(by_index[i]) for i in sorted(by_index)]
    return [(tokens.tolist(), doc_ids) for tokens, doc_ids in joined]


@pytest.mark.parametrize('seed', range(20))
def test_runs_cut_and_joined_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(2, 12))
    # documents from empty to several sequences long, so sequences span many documents and runs span none
    docs = [(i, rng.integers(1, 50, size=int(rng.integers(0, 3 * seq_len))).tolist()) for i in range(40)]
    cuts = sorted(set(rng.integers(0, len(docs), size=int(rng.integers(0, 12))).tolist()))
    assert _in_runs(docs, cuts, seq_len) == _one_pass(docs, seq_len)


def test_a_sequence_spanning_three_runs_is_joined_in_order():
    docs = [(0, [5, 6, 7]), (1, []), (2, [8]), (3, [9, 9, 9, 9, 9, 9])]
    assert _in_runs(docs, [1, 2, 3], seq_len=8) == _one_pass(docs, 8) == [
        ([5, 6, 7, 0, 0, 8, 0, 9], [0, 1, 2, 3]), ([9, 9, 9, 9, 9, 0], [3])]
