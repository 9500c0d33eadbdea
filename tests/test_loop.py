"""The core in a hand-written PyTorch loop on two gloo ranks: the weights of the global batch, and its history.

No trainer at all: ``torch.distributed`` is initialised by hand, each rank runs the loop of the README's "In any
PyTorch loop" section on its half of every batch, and the result must equal one process on the whole batch.
"""

from __future__ import annotations

import pyarrow.dataset as pads
import pytest
import torch
import torch.multiprocessing as mp

from reweigh.algorithms import Progress, Reweighter, compute_sample_weights, per_sample_loss
from reweigh.history import encode_metadata
from reweigh.history.recorder import HistoryRecorder

STEPS, BATCH, WARMUP = 4, 8, 2


def _batch(step: int) -> torch.Tensor:
    batch = torch.randint(0, 64, (BATCH, 16), generator=torch.Generator().manual_seed(step))
    batch[::2] = torch.arange(16) % 4
    return batch


def _loop(folder: str, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Train the README's model for ``STEPS`` steps, this rank on its share of each batch; the final parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64, 32), torch.nn.Linear(32, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    reweighter = Reweighter('linupper', r=0.5, warmup=WARMUP)
    metadata = encode_metadata(reweighter.settings(), run_name='loop', world_size=world)
    history = HistoryRecorder(folder, rank=rank, metadata=metadata)
    share = BATCH // world
    for step in range(STEPS):
        batch = _batch(step)[rank * share:(rank + 1) * share]
        per_sample = per_sample_loss(model(batch), batch)
        ids = torch.arange(rank * share, (rank + 1) * share) + BATCH * step
        out = reweighter.step(per_sample.loss, per_sample.tokens, Progress(step), sample_id=ids)
        (out.loss if out.loss is not None else per_sample.loss.mean()).backward()
        if world > 1:  # what DDP does: average the gradients over the ranks
            for p in model.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        optimizer.zero_grad()
        history.record(step, out.record)
    history.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, folder: str) -> None:
    # A file rendezvous, not TCP: no store server thread in rank 0 to outlive the other rank's connection (a CI
    # machine once saw rank 0 abort with "terminate called without an active exception" under torch 2.15).
    torch.distributed.init_process_group('gloo', init_method=f'file://{folder}/rendezvous', rank=rank, world_size=2)
    params = _loop(f'{folder}/history', rank, 2)
    if rank == 0:
        torch.save(params, f'{folder}/params.pt')
    torch.distributed.barrier()  # both ranks done before either tears down
    torch.distributed.destroy_process_group()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('loop')
    (folder / 'two').mkdir()
    mp.start_processes(_worker, args=(str(folder / 'two'),), nprocs=2, join=True, start_method='spawn')
    one = _loop(str(folder / 'one' / 'history'))
    return folder, one, torch.load(folder / 'two' / 'params.pt', weights_only=True)


def _history(path) -> list[dict]:
    return pads.dataset(str(path), format='parquet').to_table().sort_by([('step', 'ascending'),
                                                                         ('sample_id', 'ascending')]).to_pylist()


def test_two_ranks_weigh_the_global_batch_as_one_process_does(runs):
    folder, _, _ = runs
    one, two = _history(folder / 'one' / 'history'), _history(folder / 'two' / 'history')
    assert sorted(p.name for p in (folder / 'two' / 'history').iterdir()) == ['rank0', 'rank1']
    assert [r['sample_id'] for r in one] == [r['sample_id'] for r in two] == list(range(STEPS * BATCH))
    assert [r['rank'] for r in two] == [i // (BATCH // 2) % 2 for i in range(STEPS * BATCH)]
    for step in range(STEPS):
        rows = [r for r in two if r['step'] == step]
        weights, losses = torch.tensor([r['weight'] for r in rows]), torch.tensor([r['loss'] for r in rows])
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(weights, compute_sample_weights(losses, 'linupper' if step >= WARMUP else 'uniform', 0.5))
        torch.testing.assert_close(weights, torch.tensor([r['weight'] for r in one if r['step'] == step]))
        assert all(r['active'] == (step >= WARMUP) for r in rows)


def test_two_ranks_train_the_model_one_process_trains(runs):
    _, one, two = runs
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6)
