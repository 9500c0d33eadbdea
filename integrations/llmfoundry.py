"""reweigh in llm-foundry: a dataloader for its registry, next to the algorithm and callbacks it finds by entry point.

Installing reweigh registers, through llm-foundry's entry-point registries (``pyproject.toml``), so that an
llm-foundry YAML needs no code:

======================================  ==========================================================
registry (entry-point group)            name: reweigh object
======================================  ==========================================================
``algorithms`` (llmfoundry_algorithms)  ``loss_reweighting``: :class:`reweigh.algorithms.LossReweighting`
``callbacks`` (llmfoundry_callbacks)    ``loss_history``: :class:`reweigh.callbacks.LossHistory`;
                                        ``restore_rng_on_resume``: :class:`reweigh.callbacks.RestoreRngOnResume`
``loggers`` (llmfoundry_loggers)        ``metrics_log``: :class:`reweigh.callbacks.MetricsLog`
``dataloaders`` (llmfoundry_dataloaders) ``reweigh_streaming``: :func:`build_reweigh_dataloader`
======================================  ==========================================================

For example (``yamls/llmfoundry-mpt-tiny.yaml`` is a complete one)::

    train_loader:
      name: reweigh_streaming
      dataset: {local: data/default, split: train, shuffle: true}
    algorithms:
      loss_reweighting: {strategy: linupper, r: 1.0, warmup: 1000ba}
    callbacks:
      loss_history: {folder: '{run_name}/history'}

llm-foundry's own models (``mpt_causal_lm``, ``hf_causal_lm``) compute their loss from the logits inside
``loss()`` and keep no per-token losses, so the algorithm takes its generic path there: one extra
cross-entropy pass over the logits. Batches from ``reweigh_streaming`` carry ``sample_id`` and ``domain``
(the models ignore them), which is how :class:`~reweigh.callbacks.LossHistory` names every sample.

Example:
    >>> import tempfile
    >>> from reweigh.pipeline import prepare_default_corpus
    >>> root = tempfile.mkdtemp()
    >>> _ = prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32, progress=False)
    >>> spec = build_reweigh_dataloader(None, 4, dataset={'local': root, 'split': 'train', 'shuffle': True})
    >>> batch = next(iter(spec.dataloader))
    >>> tuple(batch['input_ids'].shape), spec.get_num_tokens_in_batch(batch, token_type='total') == 4 * 32
    ((4, 32), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from composer.core import DataSpec

from reweigh.pipeline import build_train_dataloader

__all__ = ['DATASET_KEYS', 'build_reweigh_dataloader', 'count_tokens']

DATASET_KEYS = ('remote', 'local', 'split', 'domains', 'proportions', 'shuffle', 'shuffle_seed')
"""Keys of the ``dataset`` section; any other key goes to :class:`~reweigh.pipeline.ReweighStreamingDataset`
(Streaming's ``predownload``, ``cache_limit``, ``num_canonical_nodes``, ...)."""


def count_tokens(batch: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Tokens of a batch as llm-foundry's own dataloaders count them: ``total`` are the attention mask's ones,
    ``loss_generating`` the labels of positions 1.. that are not ``-100``.

    Example:
        >>> batch = {'attention_mask': torch.tensor([[1, 1, 1, 0]]), 'labels': torch.tensor([[5, 6, 7, -100]])}
        >>> count_tokens(batch)
        {'total': 3, 'loss_generating': 2}
    """
    return {'total': int(batch['attention_mask'].sum()), 'loss_generating': int((batch['labels'][:, 1:] != -100).sum())}


def build_reweigh_dataloader(tokenizer: Any, device_batch_size: int | float, *, dataset: Mapping[str, Any],
                             drop_last: bool = True, num_workers: int = 0, **loader: Any) -> DataSpec:
    """llm-foundry's ``reweigh_streaming`` dataloader: a prepared reweigh dataset, with sample ids and domains.

    Args:
        tokenizer: The run's tokenizer (unused: the dataset holds token ids already; llm-foundry passes it).
        device_batch_size: Samples per device batch.
        dataset: ``local`` (the dataset, or with ``remote`` the local cache), ``remote`` (``s3://...``),
            ``split`` (``train`` or ``val``, default ``train``), ``domains`` (names) or ``proportions``
            (name to mixing proportion), ``shuffle`` (default: for ``train``), ``shuffle_seed`` (default
            9176), and any :class:`~reweigh.pipeline.ReweighStreamingDataset` argument.
        drop_last: Drop the last incomplete batch.
        num_workers: Dataloader worker processes.
        **loader: llm-foundry's other loader keys (``pin_memory``, ``prefetch_factor``,
            ``persistent_workers``, ``timeout``) are accepted and left to Streaming's defaults.

    Returns:
        DataSpec: The loader, counting tokens as llm-foundry's loaders do (:func:`count_tokens`).

    Raises:
        ValueError: For a missing ``local``/``remote``, both ``domains`` and ``proportions``, or a key
            that is not a loader setting.
    """
    del tokenizer
    unknown = sorted(set(loader) - {'pin_memory', 'prefetch_factor', 'persistent_workers', 'timeout'})
    if unknown:
        raise ValueError(f'reweigh_streaming: unknown loader key(s) {unknown}; dataset settings go under "dataset:"')
    settings = dict(dataset)
    remote, local = settings.pop('remote', None), settings.pop('local', None)
    if not remote and not local:
        raise ValueError('reweigh_streaming: dataset needs "local" (a prepared dataset) or "remote" (s3://..., '
                         'with "local" as its cache)')
    domains, proportions = settings.pop('domains', None), settings.pop('proportions', None)
    if domains is not None and proportions is not None:
        raise ValueError('reweigh_streaming: give dataset "domains" or "proportions", not both')
    split = settings.pop('split', 'train')
    shuffle = settings.pop('shuffle', split == 'train')
    seed = settings.pop('shuffle_seed', 9176)
    dataloader = build_train_dataloader(
        remote or local, local if remote else None, split=split,
        domains=dict(proportions) if proportions is not None else (list(domains) if domains is not None else None),
        batch_size=int(device_batch_size), seed=seed, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
        **settings)
    return DataSpec(dataloader=dataloader, get_num_tokens_in_batch=count_tokens)
