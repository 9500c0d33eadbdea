"""The Composer callback that steers a mixed stream's domain proportions from training (online domain mixing).

Example:
    >>> import numpy as np
    >>> from reweigh.callbacks.mixing import OnlineMixing
    >>> from reweigh.pipeline.mixing import make_policy
    >>> policy = make_policy('weights', np.array([0.3, 0.3, 0.4]), temperature=1.0, floor=0.05)
    >>> callback = OnlineMixing(policy)  # with loader = build_mixing_dataloader(source, policy.initial())
    >>> # composer.Trainer(..., train_dataloader=loader, callbacks=[callback])
"""

from __future__ import annotations

from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from reweigh.algorithms.loss_reweighting import LossReweighting, composer_step
from reweigh.algorithms.losses import per_sample_loss_from
from reweigh.algorithms.reweighter import Reweighter
from reweigh.pipeline.mixed_stream import MixingDataset
from reweigh.pipeline.mixing import DomainWindow, MixingPolicy

__all__ = ['OnlineMixing']


class OnlineMixing(Callback):
    """Every ``interval`` steps, new domain proportions for the training stream from the policy.

    The training dataloader must be a mixed stream (:func:`reweigh.pipeline.build_mixing_dataloader`, whose sampler
    sets the interval and the lag). Each microbatch adds its rows, weights and finite losses per domain into one
    device tensor (an ``index_add_``, no host sync). At the end of every ``interval``-th step the sums of all ranks
    are added up (one all-reduce) and read once, which synchronises with the device once per interval; the policy
    makes the next proportions, which the stream applies from ``lag`` steps later on every rank. The proportions are
    logged as ``mixing/proportion/<domain>`` (with ``mixing/update``, ``mixing/first_step`` and each domain's
    finished passes, ``mixing/passes/<domain>``), at step 0 and at every update.

    The weights are :class:`~reweigh.algorithms.LossReweighting`'s when the trainer has it (uniform during its
    warm-up, so the mix stays where it is until then); without it, a :class:`~reweigh.algorithms.Reweighter` of
    ``strategy`` computes them from the per-sample losses for the policy only, leaving training's loss alone.

    Args:
        policy (MixingPolicy): The policy (:func:`reweigh.pipeline.mixing.make_policy`).
        strategy (str): The weights' strategy without a ``LossReweighting``. Default: ``'linupper'``.
        r (float): Its temperature. Default: ``1.0``.
    """

    def __init__(self, policy: MixingPolicy, strategy: str = 'linupper', r: float = 1.0) -> None:
        self.policy = policy
        self.strategy, self.r = strategy, r
        self._dataset: MixingDataset | None = None
        self._reweighter: Reweighter | None = None
        self._own = False
        self._sums: torch.Tensor | None = None  # (3, domains of the manifest): rows, weights, losses since the update
        self._pending: torch.Tensor | None = None  # this step's, added at its end (a microbatch search may retry)

    def fit_start(self, state: State, logger: Logger) -> None:
        dataset = getattr(state.train_dataloader, 'dataset', None)
        if not isinstance(dataset, MixingDataset):
            raise ValueError('OnlineMixing needs a mixed training stream (reweigh.pipeline.build_mixing_dataloader), '
                             f'got {type(dataset).__name__}')
        self._dataset = dataset
        # Each fit iterates the loader anew from the step trained so far: the sampler continues from there itself (the
        # batches a loader fetched ahead at the end of an earlier fit are planned again), so Composer must not spin
        # the loader forward to it as it does for samplers that restart every epoch.
        dataset.sampler.rewind(int(state.timestamp.batch.value))
        state.dataset_resumption['train'] = True
        algorithm = next((a for a in state.algorithms if isinstance(a, LossReweighting)), None)
        self._own = algorithm is None
        self._reweighter = Reweighter(self.strategy, r=self.r, warmup=0) if self._own else algorithm.reweighter

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch.value) == 0 and self._dataset is not None:
            self._log(logger, 0)  # here, not at fit_start: every logger has opened its file by now
        if self._pending is not None:
            self._pending.zero_()
        if self._own and self._reweighter is not None:
            self._reweighter.reset_metrics()

    def after_loss(self, state: State, logger: Logger) -> None:
        if self._reweighter is None:
            return
        if self._own:
            per_sample, _ = per_sample_loss_from(state.outputs, state.batch)
            composer_step(self._reweighter, state, per_sample._replace(loss=per_sample.loss.detach()))
        record = self._reweighter.last.record if self._reweighter.last is not None else None
        if record is None or record.domain is None:
            return
        losses = record.losses
        if self._pending is None:
            domains = len(self._dataset.manifest.domain_names)
            self._pending = torch.zeros(3, domains, dtype=torch.float64, device=losses.device)
            self._sums = torch.zeros_like(self._pending) if self._sums is None else self._sums.to(losses.device)
        finite = torch.isfinite(losses)
        rows = torch.stack([finite, torch.where(finite, record.weights, 0), torch.where(finite, losses, 0)])
        self._pending.index_add_(1, record.domain.to(losses.device), rows.to(torch.float64))

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._dataset is None:
            return
        if self._pending is not None:
            self._sums += self._pending
        sampler = self._dataset.sampler
        done = int(state.timestamp.batch.value)
        if done % sampler.interval:
            return
        sums = self._sums if self._sums is not None else torch.zeros(3, len(self._dataset.manifest.domain_names),
                                                                        dtype=torch.float64)
        dist.all_reduce(sums)
        host = sums.cpu().numpy()[:, self._dataset.domain_indices]  # the one sync of an update
        sums.zero_()
        _, current = sampler.mix_at(done - 1)
        proportions = self.policy.update(DomainWindow(*host), current)
        sampler.push(done // sampler.interval, proportions)
        self._log(logger, done // sampler.interval)

    def _log(self, logger: Logger, update: int) -> None:
        sampler, names = self._dataset.sampler, self._dataset.domain_names
        first, _, proportions = sampler.schedule[update]
        metrics: dict[str, Any] = {'mixing/update': update, 'mixing/first_step': first}
        metrics |= {f'mixing/proportion/{n}': float(p) for n, p in zip(names, proportions)}
        passes = sampler.state_dict(update * sampler.interval)['passes']  # those finished before the update's step
        metrics |= {f'mixing/passes/{n}': int(p) for n, p in zip(names, passes)}
        # Under step `update * interval - 1`, which metrics.jsonl writes as the line of the steps done (0 for the start).
        logger.log_metrics(metrics, step=update * sampler.interval - 1)

    def state_dict(self) -> dict[str, Any]:
        return {'policy': self.policy.state_dict(), 'sums': None if self._sums is None else self._sums.cpu().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state['policy'])
        self._sums = None if state['sums'] is None else torch.tensor(state['sums'], dtype=torch.float64)
        self._pending = None  # made again at the next microbatch, on its device, where the sums move too
