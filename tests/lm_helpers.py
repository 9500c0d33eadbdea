"""Tiny causal-LM models and data shared by the Composer-level tests."""

from __future__ import annotations

import os

import torch
from composer import Trainer
from s3_emulator import free_port
from torch.utils.data import DataLoader, Dataset

from reweigh.models import ReweighCausalLM, build_causal_lm

__all__ = ['SEQ', 'VOCAB', 'TokenDataset', 'free_port', 'make_trainer', 'params', 'set_rank_env', 'tiny_gpt2']

VOCAB, SEQ = 64, 16


class TokenDataset(Dataset):
    """Random token sequences whose first half repeats a pattern (easy) and second half is noise (hard)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.ids[::2] = torch.arange(SEQ) % 4  # every other sample is the same easy pattern

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'input_ids': self.ids[i], 'labels': self.ids[i]}


def tiny_gpt2(seed: int = 0, dropout: float = 0.0, loss_impl: str = 'auto') -> ReweighCausalLM:
    torch.manual_seed(seed)
    return build_causal_lm(
        'gpt2', n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, loss_impl=loss_impl,
    )


def make_trainer(model, algorithms=(), max_duration: str = '4ba', train_dataloader=None, **kwargs) -> Trainer:
    if train_dataloader is None:
        train_dataloader = DataLoader(TokenDataset(), batch_size=8, shuffle=False)
    kwargs.setdefault('optimizers', torch.optim.SGD(model.parameters(), lr=0.5))
    return Trainer(
        model=model,
        train_dataloader=train_dataloader,
        max_duration=max_duration,
        algorithms=list(algorithms),
        device='cpu',
        progress_bar=False,
        seed=17,
        **kwargs,
    )


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The trained parameters by name (without DDP's ``module.`` prefix)."""
    return {k.removeprefix('module.'): v.detach().clone() for k, v in trainer.state.model.named_parameters()}


def set_rank_env(rank: int, world: int, port: int) -> None:
    """The environment Composer's ``dist`` reads for ``rank`` of a single-node ``world`` of gloo ranks."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), NODE_RANK='0',
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
    )
