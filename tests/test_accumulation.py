"""Microbatching and Composer's loss accumulation: the gradient LossReweighting produces is the documented one.

With ``device_train_microbatch_size`` below the batch, the weights are normalised per (global) microbatch
``k`` and the intended update is ``sum_k (N_k / N) sum_{i in k} w_i grad(l_i)``. Composer scales each
microbatch loss by its share of the batch: of the samples by default, of the loss-generating tokens with
``accumulate_train_batch_on_tokens=True``. These tests compare the gradient Composer accumulates (read at
``AFTER_TRAIN_BATCH``, after DDP's averaging) with that formula computed explicitly, on sequences with
different numbers of loss-bearing tokens, so that the token share differs from the sample share (checked);
LossReweighting undoes the token factor and the update is the same under both accumulation modes, on one
rank and on two (gloo).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pytest
import torch
import torch.multiprocessing as mp
from composer.core import Callback, DataSpec, State
from composer.loggers import Logger
from lm_helpers import SEQ, TokenDataset, free_port, make_trainer, set_rank_env, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting, compute_sample_weights
from reweigh.models import ReweighCausalLM

BATCH, MICRO, WORLD = 8, 3, 2
ALGORITHM = dict(strategy='linupper', r=0.7, warmup=0)
RTOL = 1e-5


class PaddedDataset(TokenDataset):
    """Sample ``i`` has ``labels`` ignored after a length that varies from 4 to 16 tokens."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        labels = item['labels'].clone()
        labels[SEQ - (3 * i) % (SEQ - 2):] = -100
        return {'input_ids': item['input_ids'], 'labels': labels}


def loss_generating_tokens(batch: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """llm-foundry's count: every label that is not ignored."""
    return {'total': batch['input_ids'].numel(), 'loss_generating': int((batch['labels'] != -100).sum())}


class GradientAtStep(Callback):
    """The accumulated (and, with DDP, averaged) gradient of the first step, before the optimizer uses it."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if not self.grads:
            self.grads = {k.removeprefix('module.'): p.grad.clone() for k, p in state.model.named_parameters()}


def composer_gradient(loader: DataLoader, on_tokens: bool, algorithms: Sequence = ()) -> dict[str, torch.Tensor]:
    grab = GradientAtStep()
    trainer = make_trainer(
        tiny_gpt2(), list(algorithms) or [LossReweighting(**ALGORITHM)],
        train_dataloader=DataSpec(loader, get_num_tokens_in_batch=loss_generating_tokens), max_duration='1ba',
        callbacks=[grab], device_train_microbatch_size=MICRO, accumulate_train_batch_on_tokens=on_tokens,
    )
    trainer.fit()
    return grab.grads


def explicit_gradient(microbatches: Sequence[Sequence[Sequence[int]]], share: str = 'samples') -> dict[str, torch.Tensor]:
    """``sum_k sum_r share_kr sum_{i in (k, r)} w_i grad(l_i)``, ``w`` normalised over each global microbatch ``k``.

    ``microbatches[k][r]`` are the samples of rank ``r``'s ``k``-th microbatch. ``share_kr`` is its share of
    the rank-mean samples of the batch, ``n_kr / N_bar`` (``'samples'``: the intended update, equal to
    ``sum_k (N_k / N) sum_{i in k} w_i grad(l_i)`` when every rank's ``k``-th microbatch has the same size),
    or its share of the rank-mean loss-generating tokens, ``t_kr / T_bar`` (``'tokens'``: what Composer's
    token factor alone would make of it).
    """
    model: ReweighCausalLM = tiny_gpt2()
    dataset = PaddedDataset()

    def count(indices: Sequence[int]) -> int:
        if share == 'samples':
            return len(indices)
        return sum(int((dataset[i]['labels'] != -100).sum()) for i in indices)

    world = len(microbatches[0])
    rank_mean = sum(count(part) for mb in microbatches for part in mb) / world
    total = torch.zeros(())
    for mb in microbatches:
        indices = [i for part in mb for i in part]
        batch = {k: torch.stack([dataset[i][k] for i in indices]) for k in ('input_ids', 'labels')}
        outputs = model(batch)
        model.loss(outputs, batch)
        losses = outputs['per_sample_loss'].loss
        weighted = compute_sample_weights(losses.detach(), ALGORITHM['strategy'], ALGORITHM['r']) * losses
        start = 0
        for part in mb:
            total = total + count(part) / rank_mean * weighted[start:start + len(part)].sum()
            start += len(part)
    total.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


SINGLE_MICROBATCHES = [[range(0, 3)], [range(3, 6)], [range(6, 8)]]


@pytest.fixture(scope='module')
def intended() -> dict[str, torch.Tensor]:
    return explicit_gradient(SINGLE_MICROBATCHES)


def test_token_share_of_these_microbatches_differs_from_their_sample_share(intended):
    """Otherwise the two accumulation modes could not be told apart by the tests below."""
    assert max_relative_difference(explicit_gradient(SINGLE_MICROBATCHES, share='tokens'), intended) > 0.02


@pytest.mark.parametrize('on_tokens', [False, True], ids=['sample-accumulation', 'token-accumulation'])
def test_microbatched_update_is_the_sample_share_of_each_microbatch(on_tokens, intended):
    loader = DataLoader(PaddedDataset(), batch_size=BATCH, shuffle=False)
    assert max_relative_difference(composer_gradient(loader, on_tokens), intended) < RTOL


def test_warmup_leaves_composers_token_accumulation_untouched():
    loader = DataLoader(PaddedDataset(), batch_size=BATCH, shuffle=False)
    plain = composer_gradient(loader, True, algorithms=[LossReweighting('uniform', warmup=0)])
    warm = composer_gradient(loader, True, algorithms=[LossReweighting('linupper', warmup='1ba')])
    for k, v in plain.items():
        torch.testing.assert_close(warm[k], v, rtol=0, atol=0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, WORLD, port)
    from composer.utils import dist

    dataset = PaddedDataset()
    result = {}
    for on_tokens in (False, True):
        loader = DataLoader(dataset, batch_size=BATCH // WORLD, sampler=dist.get_sampler(dataset, shuffle=False))
        result[on_tokens] = composer_gradient(loader, on_tokens)
    torch.save(result, os.path.join(out_dir, f'{rank}.pt'))


@pytest.fixture(scope='module')
def two_rank_gradients(tmp_path_factory) -> list[dict[bool, dict[str, torch.Tensor]]]:
    out_dir = tmp_path_factory.mktemp('accumulation')
    mp.start_processes(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True, start_method='spawn')
    return [torch.load(out_dir / f'{rank}.pt') for rank in range(WORLD)]


@pytest.mark.parametrize('on_tokens', [False, True], ids=['sample-accumulation', 'token-accumulation'])
def test_two_rank_microbatched_update_is_the_sample_share_of_each_global_microbatch(on_tokens, two_rank_gradients):
    # DistributedSampler without shuffling: rank r holds samples r, r + 2, ...; its microbatches are of 3 and 1.
    microbatches = [[[0, 2, 4], [1, 3, 5]], [[6], [7]]]
    intended = explicit_gradient(microbatches)
    assert max_relative_difference(explicit_gradient(microbatches, share='tokens'), intended) > 0.02
    for rank_result in two_rank_gradients:
        assert max_relative_difference(rank_result[on_tokens], intended) < RTOL
