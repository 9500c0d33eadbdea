"""Tokenizers: train a byte-level BPE on the corpus itself (offline), or load one by name or path.

Example:
    >>> tok = train_bpe_tokenizer(['def f(x):\\n    return x\\n'] * 50, vocab_size=300)
    >>> tok.decode(tok('def f(x):')['input_ids'])
    'def f(x):'
    >>> tok.eos_token
    '<|endoftext|>'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ['EOS_TOKEN', 'load_tokenizer', 'train_bpe_tokenizer']

EOS_TOKEN = '<|endoftext|>'


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts`` (lossless: decoding gives the bytes back).

    Args:
        texts (Iterable[str]): Training text, e.g. every document of every domain.
        vocab_size (int): Target vocabulary size, including the 256 byte tokens and ``<|endoftext|>``.
        min_frequency (int): Minimum count of a pair to be merged.

    Returns:
        PreTrainedTokenizerFast: With ``<|endoftext|>`` as EOS, BOS, UNK and padding token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f'vocab_size must be at least 257 (256 bytes + EOS), got {vocab_size}')
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=1 << 30)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a Hugging Face tokenizer from a local folder or a Hub name (the Hub needs a network).

    Tokenizers are data: no code that comes with one is run (``trust_remote_code=False``; a tokenizer
    that needs its own Python class is refused), and a local folder is read from its files alone, with no
    download. The tokenizer must have an EOS token (it separates packed documents); one without a padding
    token gets its EOS token as padding token.

    Raises:
        ValueError: If it cannot be loaded (unknown name, no network, not a tokenizer folder) or has no EOS.

    Example:
        >>> load_tokenizer('/no/such/tokenizer')
        Traceback (most recent call last):
        ...
        ValueError: unknown tokenizer '/no/such/tokenizer': ...
    """
    name = str(name_or_path)
    looks_local = os.path.isabs(name) or name.startswith(('.', '~')) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ValueError(f'unknown tokenizer {name!r}: no such local folder')
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if looks_local else name,
                                            trust_remote_code=False, local_files_only=looks_local)
    except (OSError, ValueError, KeyError) as e:
        if 'trust_remote_code' in str(e):
            raise ValueError(f'tokenizer {name!r} needs code of its own (a custom class in auto_map); reweigh '
                             'never runs code that comes with a tokenizer') from None
        raise ValueError(f'unknown tokenizer {name!r}: not a tokenizer folder, and not loadable from the '
                         f'Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from e
    if tok.eos_token_id is None:
        raise ValueError(f'tokenizer {name!r} has no EOS token, needed to separate packed documents')
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
