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

from reweigh.pipeline.corpus import DEFAULT_DOMAINS, default_corpus
from reweigh.pipeline.dataset import ReweighStreamingDataset, build_eval_dataloaders, build_train_dataloader
from reweigh.pipeline.ids import make_sample_id, sample_id_domains, split_sample_id
from reweigh.pipeline.lookup import SampleLookup
from reweigh.pipeline.manifest import DomainInfo, Manifest, read_manifest
from reweigh.pipeline.prepare import PrepareResult, prepare_dataset, prepare_default_corpus
from reweigh.pipeline.sources import Document, DomainSpec, load_domains_file, parse_domain_arg
from reweigh.pipeline.tokenizer import load_tokenizer, train_bpe_tokenizer

__all__ = [
    'DEFAULT_DOMAINS',
    'Document',
    'DomainInfo',
    'DomainSpec',
    'Manifest',
    'PrepareResult',
    'ReweighStreamingDataset',
    'SampleLookup',
    'build_eval_dataloaders',
    'build_train_dataloader',
    'default_corpus',
    'load_domains_file',
    'load_tokenizer',
    'make_sample_id',
    'parse_domain_arg',
    'prepare_dataset',
    'prepare_default_corpus',
    'read_manifest',
    'sample_id_domains',
    'split_sample_id',
    'train_bpe_tokenizer',
]
