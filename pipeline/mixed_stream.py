"""A training stream whose domain proportions change while it runs: the sampler online mixing steers.

:class:`MixingSampler` decides, for every global batch, which sample of which domain each of its rows is, and
:class:`MixingDataset` reads them from the prepared dataset's shards (a :class:`ReweighStreamingDataset`, so local
folders and ``s3://``/``gs://`` datasets alike, with the samples' ids and domains as every reweigh batch has them).

The rules, each kept by construction:

* **Deterministic.** Global batch ``j`` is a pure function of the seed, ``j``, the domains' cursors and the
  proportions in effect at ``j``: the number of rows per domain is drawn from a multinomial with a generator seeded
  by ``(seed, j)``, each domain's rows are the next ones of that domain's permutation, and the batch is shuffled
  with the same generator. The same config and seed give the same samples and proportions.
* **No sample twice in one pass over its domain.** Every domain is read in a permutation of its samples (seeded by
  ``(seed, domain, pass)``); a domain that runs out starts its next pass with a new permutation, counted in
  :attr:`MixingSampler.passes` (online mixing's metrics log it). Nothing hangs or stops.
* **Updates apply at known steps.** An update made after step ``k * interval - 1`` (:meth:`MixingSampler.push`)
  applies from step ``k * interval + lag``. ``lag`` covers what the dataloader fetches ahead (``num_workers *
  prefetch_factor`` batches): the sampler may be asked for a batch before training has reached it, never for one
  whose proportions are not decided yet, which it refuses rather than guess. So the sequence does not depend on
  the number of workers either.
* **Several ranks.** Every rank's sampler plans the whole global batch and takes its own slice, so every rank
  applies the same proportions at the same step; the policy's inputs are summed over the ranks before each update.
* **Resumable.** :meth:`MixingDataset.state_dict` (which Composer saves in every checkpoint) gives the cursors,
  passes and schedule at the step the checkpoint was taken, not where the prefetching sampler is.

Example:
    >>> import numpy as np
    >>> sampler = MixingSampler([10, 30], np.array([0.5, 0.5]), global_batch=4, seed=1, interval=2, lag=1)
    >>> it = iter(sampler)
    >>> [len(next(it)) for _ in range(2)]
    [4, 4]
    >>> sampler.push(1, np.array([0.0, 1.0]))  # decided after step 1, applies from step 2 * 1 + 1
    3
    >>> batch = next(it); batch = next(it)  # steps 2 and 3
    >>> sorted({sampler.domain_of(index) for index, _ in batch}), {update for _, update in batch}
    ([1], {1})
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from reweigh.pipeline.dataset import ReweighStreamingDataset

__all__ = ['MixingDataset', 'MixingSampler', 'build_mixing_dataloader', 'check_schedule', 'natural_mix']

_SNAPSHOTS = 512
"""Steps of cursors the sampler keeps for :meth:`MixingSampler.state_dict` (far more than any prefetch depth)."""


class MixingSampler(DistributedSampler):
    """Plans every global batch of a mixed stream; iterated, yields this rank's ``[(index, update), ...]``, forever.

    It is a batch sampler, and a :class:`~torch.utils.data.distributed.DistributedSampler` (each rank draws its own
    slice), so that Composer accepts it on several ranks; it has no length, so the trainer's ``max_duration`` (in
    batches or tokens) ends training.

    ``index`` is the sample's index in the dataset's sample space (domain ``d``'s samples are
    ``offsets[d] .. offsets[d] + sizes[d] - 1``) and ``update`` the number of the mix it was drawn under.

    Args:
        sizes (Sequence[int]): Samples per domain, in the dataset's stream order.
        initial (np.ndarray): The proportions until the first update applies.
        global_batch (int): Samples per step over all ranks.
        rank (int): This rank. Default: ``0``.
        world (int): Ranks. ``global_batch`` must be a multiple. Default: ``1``.
        seed (int): The stream's seed. Default: ``0``.
        interval (int): Steps between updates. Default: ``25``.
        lag (int): Steps between an update and the first step it applies to. Default: ``8``.

    Raises:
        ValueError: For a domain without samples, bad proportions, or a batch or interval that cannot work.
    """

    def __init__(self, sizes: Sequence[int], initial: np.ndarray, *, global_batch: int, rank: int = 0, world: int = 1,
                 seed: int = 0, interval: int = 25, lag: int = 8) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if (self.sizes <= 0).any():
            raise ValueError(f'every mixed domain needs training samples; domain(s) {np.flatnonzero(self.sizes <= 0).tolist()} '
                             'have none')
        check_schedule(interval, lag)
        if global_batch <= 0 or global_batch % world:
            raise ValueError(f'the global batch ({global_batch}) must be a positive multiple of the ranks ({world})')
        super().__init__(range(int(self.sizes.sum())), num_replicas=world, rank=rank, shuffle=False)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.seed, self.interval, self.lag = int(seed), int(interval), int(lag)
        self.step = 0
        """The next step to plan."""
        self.cursors = np.zeros(len(self.sizes), dtype=np.int64)
        """Each domain's position in its current pass."""
        self.passes = np.zeros(len(self.sizes), dtype=np.int64)
        """Each domain's finished passes."""
        self.schedule: list[tuple[int, int, list[float]]] = [(0, 0, _checked(initial, len(self.sizes)).tolist())]
        """``(first step, update, proportions)`` of every mix, in order."""
        self._snapshots: dict[int, tuple[list[int], list[int]]] = {}
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def first_step(self, update: int) -> int:
        """The first step mix ``update`` applies to."""
        return update * self.interval + self.lag

    def push(self, update: int, proportions: np.ndarray) -> int:
        """Add mix number ``update`` (made after step ``update * interval - 1``); returns its first step.

        Raises:
            ValueError: For updates out of order or bad proportions.
        """
        if update != self.schedule[-1][1] + 1:
            raise ValueError(f'mix update {update} after update {self.schedule[-1][1]}: updates come in order')
        first = self.first_step(update)
        self.schedule.append((first, update, _checked(proportions, len(self.sizes)).tolist()))
        return first

    def mix_at(self, step: int) -> tuple[int, np.ndarray]:
        """``(update, proportions)`` in effect at ``step``.

        Raises:
            RuntimeError: If the mix of ``step`` is not decided yet (the loader ran ahead by more than ``lag``).
        """
        decided = (step - self.lag) // self.interval if step >= self.lag else 0
        if self.schedule[-1][1] < decided:
            raise RuntimeError(f'the dataloader asked for step {step} before mix update {decided} was made: it fetches '
                               f'more than mixing.lag={self.lag} steps ahead; raise mixing.lag to at least '
                               'num_workers * prefetch_factor')
        first, update, proportions = next(e for e in reversed(self.schedule) if e[0] <= step)
        return update, np.asarray(proportions)

    def domain_of(self, index: int) -> int:
        """The domain of a sample index of the dataset's sample space."""
        return int(np.searchsorted(self.offsets, index, side='right') - 1)

    def _order(self, domain: int, pass_: int) -> np.ndarray:
        key = (domain, pass_)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != domain}
            rng = np.random.default_rng([self.seed, domain, pass_])
            self._orders[key] = rng.permutation(int(self.sizes[domain]))
        return self._orders[key]

    def _take(self, domain: int, count: int) -> np.ndarray:
        taken = []
        while count:
            order = self._order(domain, int(self.passes[domain]))
            start = int(self.cursors[domain])
            n = min(count, len(order) - start)
            taken.append(order[start:start + n] + self.offsets[domain])
            self.cursors[domain] += n
            count -= n
            if self.cursors[domain] == len(order):
                self.cursors[domain], self.passes[domain] = 0, self.passes[domain] + 1
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    def plan(self) -> tuple[int, np.ndarray]:
        """Plan step :attr:`step` (and advance): its mix's update number and the global batch's sample indices."""
        self._snapshots[self.step] = (self.cursors.tolist(), self.passes.tolist())
        self._snapshots.pop(self.step - _SNAPSHOTS, None)
        update, proportions = self.mix_at(self.step)
        rng = np.random.default_rng([self.seed, self.step])
        counts = rng.multinomial(self.global_batch, proportions / proportions.sum())
        indices = np.concatenate([self._take(d, int(c)) for d, c in enumerate(counts)])
        self.step += 1
        return update, rng.permutation(indices)

    def __len__(self) -> int:
        raise TypeError('a mixed stream has no length: it draws until training stops')

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]  (batches, not indices)
        per_rank = self.global_batch // self.world
        while True:
            update, indices = self.plan()
            mine = indices[self.rank * per_rank:(self.rank + 1) * per_rank]
            yield [(int(i), update) for i in mine]

    def state_dict(self, step: int) -> dict[str, Any]:
        """The sampler as it was before planning ``step`` (a step it planned lately, or the next one).

        Raises:
            ValueError: If ``step`` is neither.
        """
        if step == self.step:
            cursors, passes = self.cursors.tolist(), self.passes.tolist()
        elif step in self._snapshots:
            cursors, passes = self._snapshots[step]
        else:
            raise ValueError(f'the mixed stream has no state for step {step} (it is at step {self.step})')
        return {'step': step, 'cursors': cursors, 'passes': passes, 'schedule': [list(e) for e in self.schedule],
                'seed': self.seed, 'sizes': self.sizes.tolist(), 'global_batch': self.global_batch}

    def rewind(self, step: int) -> None:
        """Plan from ``step`` again (a step planned lately, or the next one), as if the batches planned after it had
        never been: what a trainer calls when it starts iterating again at ``step``, which discards the batches the
        loader had fetched ahead.

        Raises:
            ValueError: If the sampler has no state for ``step``.
        """
        if step != self.step:
            self.load_state_dict(self.state_dict(step))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s result.

        Raises:
            ValueError: If it is the state of another stream (other domains' sizes or another global batch).
        """
        if state['sizes'] != self.sizes.tolist() or state['global_batch'] != self.global_batch:
            raise ValueError(f'the checkpoint\'s mixed stream had domains of {state["sizes"]} samples and a global batch '
                             f'of {state["global_batch"]}; this one has {self.sizes.tolist()} and {self.global_batch}')
        self.step = int(state['step'])
        self.cursors = np.asarray(state['cursors'], dtype=np.int64)
        self.passes = np.asarray(state['passes'], dtype=np.int64)
        self.schedule = [(int(a), int(b), [float(x) for x in c]) for a, b, c in state['schedule']]
        self._snapshots.clear()


class MixingDataset(Dataset):
    """The samples a :class:`MixingSampler` names, read from a prepared dataset, each with the ``mix`` it was drawn
    under (``()`` int64) besides the usual ``input_ids``, ``labels``, ``attention_mask``, ``sample_id`` and ``domain``.

    Args:
        source (ReweighStreamingDataset): The training split over the mixed domains (read by index).
        sampler (MixingSampler): Its planner (:attr:`sampler`).
    """

    def __init__(self, source: ReweighStreamingDataset, sampler: MixingSampler) -> None:
        self.source, self.sampler = source, sampler
        self.manifest = source.manifest
        self.domain_names: list[str] = source.domain_names
        """The mixed domains' names, in the sampler's order."""
        self.domain_indices: list[int] = [source.manifest.domain_names.index(n) for n in source.domain_names]
        """Their indices in the manifest (the ``domain`` of their samples), in the sampler's order."""

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, update = key
        return {**self.source.get_item(int(index)), 'mix': torch.tensor(update, dtype=torch.int64)}

    def state_dict(self, num_samples: int, from_beginning: bool = True) -> dict[str, Any]:
        """The stream's state after ``num_samples`` samples of all ranks (Composer's checkpoint hook)."""
        return self.sampler.state_dict(num_samples // self.sampler.global_batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s result (Composer calls it when it loads a checkpoint)."""
        self.sampler.load_state_dict(state)


def natural_mix(source: ReweighStreamingDataset) -> np.ndarray:
    """The starting mix of a stream over ``source``'s domains: their configured proportions if it has them
    (``domains={name: proportion}``), else each domain's share of the samples."""
    streams = source.streams
    if all(s.proportion for s in streams):
        weights = [s.proportion for s in streams]
    else:
        weights = [int(n) for n in source.samples_per_stream]
    return np.asarray(weights, dtype=np.float64) / float(np.sum(weights))


def check_schedule(interval: int, lag: int, num_workers: int = 0, prefetch_factor: int | None = None) -> None:
    """Refuse an update schedule the stream cannot keep: ``interval <= 0``, ``lag < 0``, or a ``lag`` shorter than
    the batches ``num_workers`` dataloader workers fetch ahead (``prefetch_factor`` each, 2 by default).

    Raises:
        ValueError: Naming the setting and what it must be.

    Example:
        >>> from reweigh.pipeline.mixed_stream import check_schedule
        >>> check_schedule(25, 8, num_workers=5)
        Traceback (most recent call last):
        ...
        ValueError: mixing.lag=8 is shorter than the 10 batches 5 dataloader workers fetch ahead; set mixing.lag to at least 10
    """
    if interval <= 0 or lag < 0:
        raise ValueError(f'mixing.interval must be > 0 and mixing.lag >= 0, got {interval} and {lag}')
    ahead = num_workers * (prefetch_factor or 2) if num_workers else 0
    if lag < ahead:
        raise ValueError(f'mixing.lag={lag} is shorter than the {ahead} batches {num_workers} dataloader workers fetch '
                         f'ahead; set mixing.lag to at least {ahead}')


def build_mixing_dataloader(source: ReweighStreamingDataset, initial: np.ndarray | None = None, *, batch_size: int = 8,
                            rank: int = 0, world: int = 1, seed: int = 9176, interval: int = 25, lag: int = 8,
                            num_workers: int = 0, prefetch_factor: int | None = None) -> DataLoader:
    """A dataloader over ``source`` (the training split) whose mix a policy changes (:meth:`MixingSampler.push`).

    Args:
        source (ReweighStreamingDataset): The training split over the domains to mix, unshuffled (the sampler
            shuffles).
        initial (np.ndarray, optional): The first proportions, in ``source``'s domain order; default
            :func:`natural_mix`.
        batch_size (int): Per-device batch size.
        rank (int): This rank.
        world (int): Ranks.
        seed (int): The stream's seed.
        interval (int): Steps between updates.
        lag (int): Steps between an update and the first step it applies to; at least ``num_workers *
            prefetch_factor``.
        num_workers (int): Dataloader worker processes.
        prefetch_factor (int, optional): Batches each worker fetches ahead (torch's default 2 with workers).

    Returns:
        DataLoader: Its ``dataset`` is the :class:`MixingDataset`, its ``batch_sampler`` the :class:`MixingSampler`.

    Raises:
        ValueError: For a ``lag`` shorter than what the loader fetches ahead, and what the sampler refuses.

    Example:
        >>> import tempfile
        >>> from reweigh.pipeline import ReweighStreamingDataset, prepare_default_corpus
        >>> root = tempfile.mkdtemp()
        >>> _ = prepare_default_corpus(root, max_bytes_per_domain=20_000, vocab_size=400, seq_len=32, progress=False)
        >>> loader = build_mixing_dataloader(ReweighStreamingDataset(root), batch_size=4, seed=1, interval=10)
        >>> batch = next(iter(loader))
        >>> sorted(batch), loader.dataset.domain_names
        (['attention_mask', 'domain', 'input_ids', 'labels', 'mix', 'sample_id'], ['code', 'docs', 'boilerplate'])
    """
    check_schedule(interval, lag, num_workers, prefetch_factor)
    sizes = [int(n) for n in source.samples_per_stream]
    sampler = MixingSampler(sizes, natural_mix(source) if initial is None else initial, global_batch=batch_size * world,
                            rank=rank, world=world, seed=seed, interval=interval, lag=lag)
    return DataLoader(MixingDataset(source, sampler), batch_sampler=sampler, num_workers=num_workers,
                      prefetch_factor=prefetch_factor, persistent_workers=num_workers > 0)


def _checked(proportions: np.ndarray, domains: int) -> np.ndarray:
    p = np.asarray(proportions, dtype=np.float64)
    if p.shape != (domains,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f'mixing proportions must be {domains} finite non-negative numbers, not all 0; got {p.tolist()}')
    return p / p.sum()
