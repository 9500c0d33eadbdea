"""Pack tokenised documents into fixed-length sequences, remembering which documents each came from.

Every document is followed by the EOS token; the concatenation is cut into sequences of ``seq_len``
tokens, and the last, shorter one of a split is kept (it is padded when streamed).

:class:`SequencePacker` does this in one pass. :func:`cut_pieces` and :func:`join_pieces` do the same in
parallel (the Spark engine): a run of consecutive documents that starts ``offset`` tokens into the
concatenation is cut at the same boundaries, and the pieces of a sequence that spans runs are joined in
order. Both give the same sequences (tested).

Example:
    >>> packer = SequencePacker(seq_len=4, eos_id=0)
    >>> out = packer.add(7, [5, 6, 7]) + packer.add(8, [9, 9]) + packer.finish()
    >>> [(s.tolist(), d) for s, d in out]
    [([5, 6, 7, 0], [7]), ([9, 9, 0], [8])]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ['Piece', 'SequencePacker', 'cut_pieces', 'join_pieces']


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


@dataclass
class Piece:
    """The part of packed sequence ``index`` that one run of documents holds.

    Attributes:
        index (int): The sequence's index (sequence ``i`` holds tokens ``[i * seq_len, (i + 1) * seq_len)``
            of the concatenation).
        start (int): Position of the piece's first token in the concatenation.
        tokens (NDArray): The piece's tokens (int64, or the dtype of numpy token arrays given).
        doc_ids (list[int]): The documents the piece overlaps, in order.
    """

    index: int
    start: int
    tokens: NDArray[np.int64]
    doc_ids: list[int]


def cut_pieces(docs: Iterable[tuple[int, Sequence[int]]], offset: int, seq_len: int, eos_id: int) -> list[Piece]:
    """Cut a run of consecutive ``(doc_id, token_ids)`` documents, starting ``offset`` tokens into the
    concatenation of all documents, at the sequence boundaries of :class:`SequencePacker`.

    Args:
        docs: The run's documents in order (each gets an EOS token appended).
        offset: Tokens (EOS included) of all documents before the run.
        seq_len: Tokens per sequence.
        eos_id: Token appended after every document.

    Returns:
        list[Piece]: In sequence order. The first and last may be parts of sequences that other runs
        complete (see :func:`join_pieces`).

    Example:
        >>> [(p.index, p.tokens.tolist(), p.doc_ids) for p in cut_pieces([(8, [9, 9])], offset=4, seq_len=4, eos_id=0)]
        [(1, [9, 9, 0], [8])]
        >>> [(p.index, p.start, p.tokens.tolist()) for p in cut_pieces([(3, [5, 6, 7])], offset=2, seq_len=4, eos_id=0)]
        [(0, 2, [5, 6]), (1, 4, [7, 0])]
    """
    ids, ends = [], []
    doc_ids, length = [], 0
    for doc_id, tokens in docs:
        # numpy tokens keep their dtype (the Spark engine's int32 halves what it shuffles)
        ids.append(np.asarray(tokens, dtype=tokens.dtype if isinstance(tokens, np.ndarray) else np.int64))
        ids.append(np.array([eos_id], dtype=ids[-1].dtype))
        length += len(tokens) + 1
        doc_ids.append(doc_id)
        ends.append(length)
    if not length:
        return []
    flat = np.concatenate(ids)
    ends_array = np.asarray(ends)
    starts_array = np.concatenate([[0], ends_array[:-1]])
    pieces = []
    for index in range(offset // seq_len, (offset + length - 1) // seq_len + 1):
        begin, end = max(index * seq_len - offset, 0), min((index + 1) * seq_len - offset, length)
        overlapping = np.flatnonzero((starts_array < end) & (ends_array > begin))
        pieces.append(Piece(index, offset + begin, flat[begin:end], [doc_ids[i] for i in overlapping]))
    return pieces


def join_pieces(pieces: Iterable[Piece]) -> tuple[NDArray[np.int64], list[int]]:
    """The ``(token_ids, document_ids)`` sequence made of all the pieces of one sequence, in any order.

    Example:
        >>> a, b = cut_pieces([(0, [5, 6])], 0, 4, 0), cut_pieces([(1, [7])], 3, 4, 0)
        >>> tokens, docs = join_pieces([b[0], a[0]])
        >>> tokens.tolist(), docs
        ([5, 6, 0, 7], [0, 1])
    """
    ordered = sorted(pieces, key=lambda p: p.start)
    return (np.concatenate([p.tokens for p in ordered]),
            [doc_id for p in ordered for doc_id in p.doc_ids])
