"""The data side of ``reweigh train``: find (or prepare) the dataset, its tokenizer and dataloaders.

Example:
    >>> from reweigh.train.data import DatasetRef
    >>> DatasetRef('s3://bucket/data', '/tmp/cache').root
    's3://bucket/data'
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import numpy as np

from reweigh.pipeline import (
    build_eval_dataloaders,
    build_train_dataloader,
    prepare_default_corpus,
    read_manifest,
)
from reweigh.pipeline import (
    load_tokenizer as load_named_tokenizer,
)
from reweigh.pipeline.dataset import ReweighStreamingDataset
from reweigh.pipeline.lookup import SampleLookup
from reweigh.pipeline.mixed_stream import build_mixing_dataloader, check_schedule, natural_mix
from reweigh.pipeline.mixing import MixingPolicy, make_policy
from reweigh.train.config import ConfigError

__all__ = ['DatasetRef', 'build_eval_loaders', 'build_mixed_train_loader', 'build_train_loader', 'load_tokenizer',
           'prepare_if_needed']

_WAIT_FOR_PREPARE_S = 1800


class DatasetRef(NamedTuple):
    """Where a loader's dataset lives: ``root`` (local folder or URI) and the local cache for a remote root."""
    root: str
    cache: str | None


def _ref(dataset_cfg: Any) -> DatasetRef:
    if dataset_cfg.remote is not None:
        return DatasetRef(dataset_cfg.remote, dataset_cfg.local)
    return DatasetRef(dataset_cfg.local, None)


def _has_manifest(ref: DatasetRef) -> bool:
    try:
        read_manifest(ref.root, ref.cache)
    except FileNotFoundError:
        return False
    return True


def prepare_if_needed(cfg: Any) -> DatasetRef:
    """The training dataset, preparing the embedded default corpus first if the config asks for it.

    With several ranks, local rank 0 prepares and the others wait for its manifest.

    Raises:
        ConfigError: If the dataset is missing and ``prepare_default`` is off.
    """
    ds = cfg.train_loader.dataset
    ref = _ref(ds)
    if _has_manifest(ref):
        return ref
    if ds.remote is not None or not ds.prepare_default:
        raise ConfigError(
            f"config key 'train_loader.dataset': no prepared dataset at {ref.root!r}; run `reweigh prepare` "
            'first (or set prepare_default: true to build the embedded default corpus there).',
        )
    if int(os.environ.get('LOCAL_RANK', '0')) == 0:
        print(f'reweigh train: preparing the embedded default corpus in {ref.root} (once)', flush=True)
        prepare_default_corpus(ref.root)
    else:
        deadline = time.monotonic() + _WAIT_FOR_PREPARE_S
        while not _has_manifest(ref):
            if time.monotonic() > deadline:
                raise TimeoutError(f'local rank 0 did not finish preparing {ref.root} in {_WAIT_FOR_PREPARE_S} s.')
            time.sleep(2)
    return ref


def load_tokenizer(cfg: Any, ref: DatasetRef):
    """``tokenizer.name`` if set (a Hugging Face name or local path), else the dataset's own tokenizer."""
    if cfg.tokenizer.name:
        return load_named_tokenizer(cfg.tokenizer.name)
    return SampleLookup(ref.root, ref.cache).tokenizer


def build_train_loader(cfg: Any, ref: DatasetRef, device_batch: int):
    """The streaming training dataloader (per-device batch), mixing domains by ``proportions``."""
    ds = cfg.train_loader.dataset
    proportions = dict(ds.proportions) if ds.proportions else None
    try:
        return build_train_dataloader(
            ref.root, ref.cache, split='train', domains=proportions, batch_size=device_batch,
            seed=cfg.seed if ds.shuffle_seed is None else ds.shuffle_seed, shuffle=ds.shuffle,
            num_workers=cfg.train_loader.num_workers, drop_last=cfg.train_loader.drop_last,
        )
    except ValueError as e:
        raise ConfigError(f"config key 'train_loader.dataset': {e}") from e


def build_mixed_train_loader(cfg: Any, ref: DatasetRef, device_batch: int, rank: int = 0,
                             world: int = 1) -> tuple[Any, MixingPolicy]:
    """The training stream whose proportions the ``mixing`` section's policy steers, and that policy.

    The starting mix is ``train_loader.dataset.proportions`` if set, else the domains' natural sizes.

    Raises:
        ConfigError: For an unknown policy, an option it does not take, or settings it or the stream refuse.
    """
    m, ds = cfg.mixing, cfg.train_loader.dataset
    proportions = dict(ds.proportions) if ds.proportions else None
    options = {k: getattr(m, k) for k in ('temperature', 'floor', 'smoothing', 'anchor', 'alpha') if getattr(m, k) is not None}
    try:
        # what the policy and the schedule refuse is refused before the stream opens: a Streaming dataset holds its
        # shared memory until the process ends
        domains = list(proportions) if proportions else read_manifest(ref.root, ref.cache).domain_names
        make_policy(m.policy, np.full(len(domains), 1.0 / len(domains)), **options, **dict(m.options))
        check_schedule(m.interval, m.lag, cfg.train_loader.num_workers)
        source = ReweighStreamingDataset(ref.root, ref.cache, split='train', domains=proportions, shuffle=False)
        policy = make_policy(m.policy, natural_mix(source), **options, **dict(m.options))
        loader = build_mixing_dataloader(
            source, policy.initial(), batch_size=device_batch, rank=rank, world=world,
            seed=cfg.seed if ds.shuffle_seed is None else ds.shuffle_seed, interval=m.interval, lag=m.lag,
            num_workers=cfg.train_loader.num_workers,
        )
    except ValueError as e:
        raise ConfigError(f"config key 'mixing': {e}") from e
    return loader, policy


def build_eval_loaders(cfg: Any, ref: DatasetRef, device_batch: int) -> dict[str, Any]:
    """One validation dataloader per domain (``{}`` without an ``eval_loader`` section)."""
    if cfg.eval_loader is None:
        return {}
    ds = cfg.eval_loader.dataset
    eval_ref = _ref(ds) if (ds.remote or ds.local != cfg.train_loader.dataset.local) else ref
    domains = list(ds.proportions) if ds.proportions else None
    try:
        return build_eval_dataloaders(
            eval_ref.root, eval_ref.cache, batch_size=device_batch, domains=domains,
            num_workers=cfg.eval_loader.num_workers,
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config key 'eval_loader.dataset': {e}") from e
