"""Tokenised corpora as MosaicML Streaming shards, with a stable sample id and domain per sample.

``prepare_dataset`` (or ``reweigh prepare``) turns named domains of text into compressed MDS shards with
a manifest; ``build_train_dataloader``/``build_eval_dataloaders`` stream them into Composer with
``input_ids``, ``labels``, ``attention_mask``, ``sample_id`` and ``domain``; ``SampleLookup`` maps a sample
id back to its text, domain and source documents. See ``docs/pipeline.md``.

Example:
    >>> import tempfile
    >>> import reweigh.pipeline as rp
    >>> root = tempfile.mkdtemp()
    >>> result = rp.prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32,
    ...                                    progress=False)
    >>> batch = next(iter(rp.build_train_dataloader(root, batch_size=2, seed=0)))
    >>> rp.SampleLookup(root).domain(int(batch['sample_id'][0])) in result.manifest.domain_names
    True
"""

import importlib
from typing import Any

_EXPORTS = {
    'DEFAULT_DOMAINS': 'corpus', 'default_corpus': 'corpus',
    'ReweighStreamingDataset': 'dataset', 'build_eval_dataloaders': 'dataset', 'build_train_dataloader': 'dataset',
    'decode_sample_ids': 'ids', 'make_sample_id': 'ids', 'sample_id_domains': 'ids', 'split_sample_id': 'ids',
    'SampleLookup': 'lookup',
    'MixingDataset': 'mixed_stream', 'MixingSampler': 'mixed_stream', 'build_mixing_dataloader': 'mixed_stream',
    'natural_mix': 'mixed_stream',
    'DomainWindow': 'mixing', 'available_policies': 'mixing', 'make_policy': 'mixing', 'register_policy': 'mixing',
    'DomainInfo': 'manifest', 'Manifest': 'manifest', 'read_manifest': 'manifest',
    'PrepareResult': 'prepare', 'prepare_dataset': 'prepare', 'prepare_default_corpus': 'prepare',
    'Document': 'sources', 'DomainSpec': 'sources', 'load_domains_file': 'sources', 'parse_domain_arg': 'sources',
    'load_tokenizer': 'tokenizer', 'train_bpe_tokenizer': 'tokenizer',
}
"""Where each public name lives. They are imported on first use, so that
``reweigh.pipeline.manifest`` can be used (by ``reweigh analyze``, say) without importing Streaming and torch."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    'DEFAULT_DOMAINS',
    'Document',
    'DomainInfo',
    'DomainSpec',
    'DomainWindow',
    'Manifest',
    'MixingDataset',
    'MixingSampler',
    'PrepareResult',
    'ReweighStreamingDataset',
    'SampleLookup',
    'available_policies',
    'build_eval_dataloaders',
    'build_mixing_dataloader',
    'build_train_dataloader',
    'decode_sample_ids',
    'default_corpus',
    'load_domains_file',
    'load_tokenizer',
    'make_policy',
    'make_sample_id',
    'natural_mix',
    'parse_domain_arg',
    'prepare_dataset',
    'prepare_default_corpus',
    'read_manifest',
    'register_policy',
    'sample_id_domains',
    'split_sample_id',
    'train_bpe_tokenizer',
]
