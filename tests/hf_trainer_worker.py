"""Tiny GPT-2 and data for the ReweighTrainer tests, and the worker of their two-process run.

Run as ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/hf_trainer_worker.py OUT``: each
process trains :data:`WORKER` settings for two steps, writing the loss history to ``OUT/history``; rank 0
saves the parameters after the first step; then each process weighs a microbatch of unequal size (3 samples on
rank 0, 4 on rank 1) and saves what it used to ``OUT/rank{N}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset

VOCAB, SEQ, SAMPLES = 64, 16, 16
WORKER = dict(strategy='linupper', r=0.7, warmup=0)
LR = 0.1


def tiny_gpt2(seed: int = 0) -> transformers.GPT2LMHeadModel:
    """A randomly initialised one-layer GPT-2 without dropout (so losses in training mode are deterministic)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def token_data(n: int = SAMPLES, seed: int = 0) -> Dataset:
    """Random token sequences (every other one an easy repeating pattern), with ``sample_id`` 100 + i and ``domain`` i % 3."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    ids[::2] = torch.arange(SEQ) % 4
    return Dataset.from_dict({
        'input_ids': ids.tolist(), 'labels': ids.tolist(), 'sample_id': [100 + i for i in range(n)],
        'domain': [i % 3 for i in range(n)],
    })


def training_args(output_dir: str | Path, **overrides: Any) -> transformers.TrainingArguments:
    """Plain SGD at a constant rate without clipping (so a wrong loss scale shows), on the CPU, offline and quiet."""
    settings = dict(
        max_steps=3, per_device_train_batch_size=4, learning_rate=LR, optim='sgd', lr_scheduler_type='constant',
        max_grad_norm=0.0, weight_decay=0.0, report_to='none', use_cpu=True, disable_tqdm=True, logging_steps=1,
        save_strategy='no', seed=17, log_level='error', dataloader_num_workers=0,
    )
    settings.update(overrides)
    return transformers.TrainingArguments(str(output_dir), **settings)


class _SaveAfterFirstStep(transformers.TrainerCallback):

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1 and state.is_world_process_zero:
            torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, self.path)


def main(out: Path) -> None:
    from reweigh.integrations.transformers import ReweighTrainer

    trainer = ReweighTrainer(
        model=tiny_gpt2(), args=training_args(out / 'trainer', max_steps=2), train_dataset=token_data(),
        history_folder=out / 'history', callbacks=[_SaveAfterFirstStep(out / 'params_step1.pt')], **WORKER,
    )
    trainer.train()
    rank = trainer.args.process_index
    ids = token_data()['input_ids']
    mine = slice(0, 3) if rank == 0 else slice(3, 7)
    batch = {'input_ids': torch.tensor(ids[mine]), 'labels': torch.tensor(ids[mine])}
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    last = trainer.last_microbatch
    torch.save({'losses': last.losses, 'weights': last.weights, 'loss': loss}, out / f'rank{rank}.pt')


if __name__ == '__main__':
    main(Path(sys.argv[1]))
