"""Documents to token ids, as both engines of ``prepare_dataset`` (and the tokenizer's training) read them.

Only documents with some non-blank text count (:func:`non_empty`): they alone are numbered, split, tokenised
and trained on. :func:`encode_documents` tokenises them in batches of :data:`ENCODE_BATCH`, without special
tokens (the packer adds EOS after every document).

Example:
    >>> from reweigh.pipeline.sources import Document
    >>> def tok(texts, add_special_tokens):  # a tokenizer: one token per character
    ...     return {'input_ids': [[ord(c) for c in t] for t in texts]}
    >>> docs = [Document('a.txt', 'hi'), Document('b.txt', ' \\n'), Document('c.txt', 'yo')]
    >>> [([d.source for d in batch], ids) for batch, ids in encode_documents(tok, docs)]
    [(['a.txt', 'c.txt'], [[104, 105], [121, 111]])]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from reweigh.pipeline.sources import Document

__all__ = ['ENCODE_BATCH', 'encode_documents', 'non_empty']

ENCODE_BATCH = 64
"""Documents tokenised per call of the tokenizer."""


def non_empty(docs: Iterable[Document]) -> Iterator[Document]:
    """The documents of ``docs`` whose text is not blank, in order.

    Example:
        >>> [d.source for d in non_empty([Document('a', 'x'), Document('b', '\\t ')])]
        ['a']
    """
    return (d for d in docs if d.text.strip())


def encode_documents(tok: Any, docs: Iterable[Document]) -> Iterator[tuple[list[Document], list[list[int]]]]:
    """Tokenise the non-empty documents of ``docs`` with ``tok``; yield each batch and its token ids.

    Args:
        tok: A Hugging Face tokenizer (called as ``tok(texts, add_special_tokens=False)``).
        docs (Iterable[Document]): The documents, read lazily.

    Yields:
        (list[Document], list[list[int]]): Up to :data:`ENCODE_BATCH` consecutive non-empty documents and
        their token ids.

    Example:
        >>> def tok(texts, add_special_tokens):
        ...     return {'input_ids': [[len(t)] for t in texts]}
        >>> [len(batch) for batch, _ in encode_documents(tok, [Document(str(i), 'x') for i in range(130)])]
        [64, 64, 2]
    """
    docs = non_empty(docs)
    while batch := list(islice(docs, ENCODE_BATCH)):
        yield batch, tok([d.text for d in batch], add_special_tokens=False)['input_ids']
