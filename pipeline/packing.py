"""Pack tokenised documents into fixed-length sequences, remembering which documents each came from.

Every document is followed by the EOS token; the concatenation is cut into sequences of ``seq_len``
tokens, and the last, shorter one of a split is kept (it is padded when streamed).

Example:
    >>> packer = SequencePacker(seq_len=4, eos_id=0)
    >>> out = packer.add(7, [5, 6, 7]) + packer.add(8, [9, 9]) + packer.finish()
    >>> [(s.tolist(), d) for s, d in out]
    [([5, 6, 7, 0], [7]), ([9, 9, 0], [8])]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ['SequencePacker']


class SequencePacker:
    """Accumulates documents' tokens and emits ``(token_ids, document_ids)`` sequences.

    Args:
        seq_len (int): Tokens per sequence.
        eos_id (int): Token appended after every document.
    """

    def __init__(self, seq_len: int, eos_id: int) -> None:
        if seq_len < 2:
            raise ValueError(f'seq_len must be at least 2, got {seq_len}')
        self.seq_len = seq_len
        self.eos_id = eos_id
        self._tokens: list[int] = []
        self._docs: list[tuple[int, int]] = []  # (document id, end position in self._tokens)

    def add(self, doc_id: int, token_ids: Sequence[int]) -> list[tuple[NDArray[np.int64], list[int]]]:
        """Append one document (plus EOS); return the sequences completed by it."""
        self._tokens.extend(token_ids)
        self._tokens.append(self.eos_id)
        self._docs.append((doc_id, len(self._tokens)))
        out = []
        while len(self._tokens) >= self.seq_len:
            out.append(self._emit(self.seq_len))
        return out

    def finish(self) -> list[tuple[NDArray[np.int64], list[int]]]:
        """Emit the remaining tokens as a last, shorter sequence (none when nothing is left)."""
        return [self._emit(len(self._tokens))] if self._tokens else []

    def _emit(self, n: int) -> tuple[NDArray[np.int64], list[int]]:
        seq = np.asarray(self._tokens[:n], dtype=np.int64)
        del self._tokens[:n]
        # Documents overlapping [0, n): all whose end is > 0 (the start is the previous one's end).
        doc_ids = []
        start = 0
        kept = []
        for doc_id, end in self._docs:
            if start < n and end > 0:
                doc_ids.append(doc_id)
            if end > n:
                kept.append((doc_id, end - n))
            start = end
        self._docs = kept
        return seq, doc_ids
