"""Stream a prepared dataset back: a ``StreamingDataset`` with sample ids and domains, and its dataloaders.

Every sample is a dict of tensors: ``input_ids`` (``seq_len``,) int64, ``labels`` (= ``input_ids``, ``-100``
at padding), ``attention_mask`` (1 on tokens, 0 on padding), ``sample_id`` () int64 (see
:mod:`reweigh.pipeline.ids`) and ``domain`` () int64 (the manifest's domain index). Batches stack them
with the batch dimension first. Only the last sequence of a domain's split can be shorter than
``seq_len`` and be padded (with the tokenizer's padding token).

Example:
    >>> import tempfile
    >>> from reweigh.pipeline.prepare import prepare_default_corpus
    >>> root = tempfile.mkdtemp()
    >>> _ = prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32,
    ...                            progress=False)
    >>> loader = build_train_dataloader(root, batch_size=4, seed=1)
    >>> batch = next(iter(loader))
    >>> sorted(batch), tuple(batch['input_ids'].shape), batch['sample_id'].dtype
    (['attention_mask', 'domain', 'input_ids', 'labels', 'sample_id'], (4, 32), torch.int64)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.format import get_index_basename

from reweigh.io import uri
from reweigh.pipeline.ids import SPLITS
from reweigh.pipeline.manifest import Manifest, read_manifest
from reweigh.pipeline.shards import read_index
from reweigh.pipeline.shared_memory import close_dataset, track

__all__ = ['ReweighStreamingDataset', 'build_eval_dataloaders', 'build_train_dataloader']

Domains = Sequence[str] | Mapping[str, float] | None


class ReweighStreamingDataset(StreamingDataset):
    """A :class:`streaming.StreamingDataset` over some domains of one split of a prepared dataset.

    Resumption, determinism (``seed``), sharding over ranks and workers, and mixing are Streaming's: one
    :class:`streaming.Stream` per domain, with ``proportion`` when ``domains`` maps names to proportions.

    Args:
        root (str | PathLike): The prepared dataset: a local folder or a remote URI (``s3://...``).
        local_cache (str | PathLike, optional): Local folder for downloaded shards; required for a remote
            ``root``. Without it a local ``root`` is read in place (Streaming decompresses shards next to
            their compressed files).
        split (str): ``'train'`` or ``'val'``.
        domains (Sequence[str] | Mapping[str, float], optional): Domains to read (default: all, each in its
            natural size), or a mapping of domain name to mixing proportion (Streaming normalises them).
        batch_size (int, optional): Per-device batch size (Streaming partitions samples by it).
        shuffle (bool): Shuffle samples (Streaming's block shuffle).
        seed (int): Shuffle seed; the same seed gives the same order.
        validate_hash (str, optional): Hash checked when a shard is decompressed (``'xxh64'`` or
            ``'sha1'``, both written by prepare; ``None`` to skip). A corrupted shard raises ``ValueError``.
        **kwargs: More :class:`streaming.StreamingDataset` arguments (``epoch_size``, ``predownload``,
            ``num_canonical_nodes``, ``shuffle_algo``, ``cache_limit``, ...).

    Streaming keeps a dataset's shared memory until the process exits; :meth:`close` gives it back sooner, and
    :func:`reweigh.pipeline.shared_memory.closing_datasets` closes the datasets built in a block (a process
    that builds many datasets otherwise runs out of file descriptors).

    Raises:
        FileNotFoundError: If ``root`` holds no prepared dataset.
        ValueError: For an unknown split or domain, a bad proportion, or a remote ``root`` without cache.
    """

    def __init__(self, root: str | os.PathLike, local_cache: str | os.PathLike | None = None, *, split: str = 'train',
                 domains: Domains = None, batch_size: int | None = None, shuffle: bool = False, seed: int = 9176,
                 validate_hash: str | None = 'xxh64', **kwargs: Any) -> None:
        track(self)
        root = str(root)
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        remote = uri.is_remote(root)
        if remote and local_cache is None:
            raise ValueError(f'reading the remote dataset {root} needs a local_cache folder')
        if local_cache is not None:
            os.makedirs(local_cache, exist_ok=True)
        self.manifest: Manifest = read_manifest(root, local_cache)
        self.root = root
        self.split = split
        self.seq_len = self.manifest.seq_len
        self.pad_token_id = int(self.manifest.tokenizer['pad_token_id'])
        streams = []
        selected = _select_domains(self.manifest, domains)
        self.domain_names: list[str] = list(selected)
        """The domains read, in the order of their streams."""
        for name, proportion in selected.items():
            rel = self.manifest.domain(name).path(split)
            where = uri.join(root, rel, 'index.json')
            columns = self.manifest.mds['columns']
            if local_cache is None:
                streams.append(_CheckedStream(where, columns, local=os.path.join(root, rel), proportion=proportion))
            else:
                streams.append(_CheckedStream(where, columns, remote=uri.join(root, rel),
                                              local=os.path.join(str(local_cache), rel), proportion=proportion))
        super().__init__(streams=streams, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                         validate_hash=validate_hash, **kwargs)

    def close(self) -> None:
        """Give back the dataset's shared memory now (its dataloaders are done with); see
        :func:`reweigh.pipeline.shared_memory.close_dataset`. Closing twice does nothing."""
        close_dataset(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` gave the dataset's shared memory back."""
        return bool(self.__dict__.get('_reweigh_closed'))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Streaming ends the epoch early, with only a log line, when its shard-preparing thread fails
        # (e.g. a checksum failure); raise that error instead of yielding a silently truncated epoch.
        # The same failure can also surface in this thread, when a sample's shard is prepared here.
        self._background_error: BaseException | None = None
        try:
            yield from super().__iter__()
        except (RuntimeError, ValueError) as e:
            if self._background_error is None and isinstance(e, RuntimeError):
                raise
            raise self._reading_error(self._background_error or e) from e
        if self._background_error is not None:
            raise self._reading_error(self._background_error)

    def on_exception(self, future: Future) -> None:
        """Remember a background thread's error (then let Streaming stop the epoch).

        A thread that dies of an error never reports its exit, and Streaming's end of epoch waits for
        every thread to report: without counting it here, an epoch whose shard-preparing thread failed
        (e.g. on a truncated shard) would hang instead of raising."""
        if future.exception() is not None:
            self._background_error = future.exception()
            iterator = getattr(self, '_iterator', None)
            if iterator is not None:
                iterator.on_exit()
        super().on_exception(future)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Streaming's ``prepare_shard``, except that a failure (e.g. a checksum mismatch) restores the
        shard's state: Streaming leaves it "preparing", and a reader waiting for it would wait forever."""
        before = self._shard_states[shard_id]
        try:
            super().prepare_shard(shard_id, blocking)
        except BaseException:
            self._cache_filelock.acquire()
            try:
                self._shard_states[shard_id] = before
            finally:
                self._cache_filelock.release()
            raise

    def _reading_error(self, cause: BaseException) -> ValueError:
        error = ValueError(f'cannot read {self.split} of {self.root}: {cause}')
        error.__cause__ = cause
        return error

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, torch.Tensor]:
        """Sample number ``sample_id`` of this dataset's epoch space (Streaming's index, not our sample id)."""
        obj = super().get_item(sample_id, retry)
        ids = torch.from_numpy(obj['input_ids'].astype(np.int64))
        n = len(ids)
        input_ids = torch.full((self.seq_len,), self.pad_token_id, dtype=torch.int64)
        labels = torch.full((self.seq_len,), -100, dtype=torch.int64)
        attention_mask = torch.zeros(self.seq_len, dtype=torch.int64)
        input_ids[:n] = ids
        labels[:n] = ids
        attention_mask[:n] = 1
        return {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
                'sample_id': torch.tensor(int(obj['sample_id']), dtype=torch.int64),
                'domain': torch.tensor(int(obj['domain']), dtype=torch.int64)}


class _CheckedStream(Stream):
    """A :class:`streaming.Stream` whose ``index.json`` must follow the reweigh MDS contract.

    Streaming downloads and parses the index in :meth:`get_shards` (building shard readers reads no
    sample); the index is checked right after, before any shard is downloaded or decoded.
    """

    def __init__(self, where: str, columns: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._where, self._columns = where, dict(columns)

    def get_shards(self, world: Any, allow_unsafe_types: bool) -> list:
        index = os.path.join(self.local, self.split or '', get_index_basename())
        try:
            readers = super().get_shards(world, allow_unsafe_types)
        except Exception:
            if os.path.exists(index):  # our message names the problem and the file, Streaming's may not
                read_index(index, self._columns, self._where)
            raise
        read_index(index, self._columns, self._where)
        return readers


def build_train_dataloader(root: str | os.PathLike, local_cache: str | os.PathLike | None = None, *,
                           split: str = 'train', domains: Domains = None, batch_size: int = 8, seed: int = 9176,
                           shuffle: bool = True, num_workers: int = 0, drop_last: bool = True,
                           **dataset_kwargs: Any) -> StreamingDataLoader:
    """A :class:`streaming.StreamingDataLoader` over a prepared dataset, for training (Composer takes it as is).

    Its ``state_dict()``/``load_state_dict()`` resume mid-epoch (Composer checkpoints call the dataset's
    ``state_dict(num_samples, from_beginning)``). ``dataset_kwargs`` go to :class:`ReweighStreamingDataset`.

    Args:
        root (str | PathLike): Dataset root (local folder or remote URI).
        local_cache (str | PathLike, optional): Local shard cache; required for a remote ``root``.
        split (str): ``'train'`` or ``'val'``.
        domains (Sequence[str] | Mapping[str, float], optional): Domains, or domain -> mixing proportion.
        batch_size (int): Per-device batch size.
        seed (int): Shuffle seed.
        shuffle (bool): Shuffle samples.
        num_workers (int): Dataloader worker processes.
        drop_last (bool): Drop the last incomplete batch.

    Returns:
        StreamingDataLoader: Batches of ``input_ids``, ``labels``, ``attention_mask`` (B, T) and
        ``sample_id``, ``domain`` (B,), all int64.
    """
    dataset = ReweighStreamingDataset(root, local_cache, split=split, domains=domains, batch_size=batch_size,
                                      shuffle=shuffle, seed=seed, **dataset_kwargs)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                               persistent_workers=num_workers > 0)


def build_eval_dataloaders(root: str | os.PathLike, local_cache: str | os.PathLike | None = None, *,
                           batch_size: int = 8, domains: Sequence[str] | None = None, split: str = 'val',
                           num_workers: int = 0, **dataset_kwargs: Any) -> dict[str, StreamingDataLoader]:
    """One unshuffled dataloader per domain over the held-out split, keyed by domain name.

    Example (for Composer): ``[Evaluator(label=f'val/{name}', dataloader=dl) for name, dl in
    build_eval_dataloaders(root, batch_size=8).items()]``.
    """
    manifest = read_manifest(root, local_cache)
    names = list(_select_domains(manifest, domains))
    return {name: build_train_dataloader(root, local_cache, split=split, domains=[name], batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, drop_last=False, **dataset_kwargs)
            for name in names}


def _select_domains(manifest: Manifest, domains: Domains) -> dict[str, float | None]:
    if domains is None:
        return {name: None for name in manifest.domain_names}
    if isinstance(domains, str):
        raise ValueError(f'domains must be a list of names or a mapping of name -> proportion, got {domains!r}')
    if isinstance(domains, Mapping):
        selected = {}
        for name, p in domains.items():
            manifest.domain(name)
            if not isinstance(p, (int, float)) or not p > 0:
                raise ValueError(f'proportion of domain {name!r} must be a number > 0, got {p!r}')
            selected[name] = float(p)
    else:
        selected = {manifest.domain(name).name: None for name in domains}
    if not selected:
        raise ValueError('no domains selected')
    return selected
