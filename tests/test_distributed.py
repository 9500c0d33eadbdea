"""Two CPU ranks (gloo): every rank uses the weights of the whole global batch."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from lm_helpers import TokenDataset, free_port, make_trainer, params, set_rank_env, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting, compute_sample_weights, gather_global_batch
from reweigh.callbacks import LossHistory

WORLD = 2
GLOBAL_LOSSES = torch.tensor([2.3, 0.1, 4.0, 1.7, float('nan'), 3.3, 0.9, 2.8])
GLOBAL_TOKENS = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12])
ALGORITHM = dict(strategy='linupper', r=0.7, warmup='1ba')


class IdDataset(TokenDataset):

    def __getitem__(self, i):
        return {**super().__getitem__(i), 'sample_id': torch.tensor(i)}


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, WORLD, port)
    from composer.utils import dist

    model = tiny_gpt2()
    dataset = IdDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=dist.get_sampler(dataset, shuffle=False))
    history = LossHistory(folder=os.path.join(out_dir, 'history'))
    trainer = make_trainer(
        model, [LossReweighting(**ALGORITHM)], train_dataloader=loader, max_duration='3ba', callbacks=[history],
    )

    # functional core, equal shards: this rank holds samples [4 * rank, 4 * rank + 4)
    mine = slice(4 * rank, 4 * rank + 4)
    batch = gather_global_batch(GLOBAL_LOSSES[mine], GLOBAL_TOKENS[mine])
    equal = compute_sample_weights(batch.losses, 'linupper', 0.7)[batch.local]
    # unequal shards (rank 0 has 3 samples, rank 1 has 5) padded to a capacity of 5
    mine = slice(0, 3) if rank == 0 else slice(3, 8)
    batch = gather_global_batch(GLOBAL_LOSSES[mine], GLOBAL_TOKENS[mine], capacity=5)
    unequal = compute_sample_weights(batch.losses, 'linupper', 0.7)[batch.local]

    trainer.fit()
    torch.save({'equal': equal, 'unequal': unequal, 'params': params(trainer)}, os.path.join(out_dir, f'{rank}.pt'))


@pytest.fixture(scope='module')
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('ranks')
    mp.start_processes(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True, start_method='spawn')
    results = [torch.load(out_dir / f'{rank}.pt') for rank in range(WORLD)]
    results[0]['history'] = out_dir / 'history'
    return results


def test_each_rank_uses_the_single_process_weights_of_the_global_batch(two_rank_results):
    single = compute_sample_weights(GLOBAL_LOSSES, 'linupper', 0.7)
    torch.testing.assert_close(torch.cat([r['equal'] for r in two_rank_results]), single)
    torch.testing.assert_close(torch.cat([r['unequal'] for r in two_rank_results]), single)
    assert two_rank_results[0]['unequal'].shape == (3,) and two_rank_results[1]['unequal'].shape == (5,)


def test_two_rank_training_equals_single_process_training_on_the_global_batch(two_rank_results):
    single = make_trainer(
        tiny_gpt2(), [LossReweighting(**ALGORITHM)],
        train_dataloader=DataLoader(TokenDataset(), batch_size=8, shuffle=False), max_duration='3ba',
    )
    single.fit()
    reference = params(single)
    for result in two_rank_results:
        for k, v in reference.items():
            torch.testing.assert_close(result['params'][k], v, rtol=1e-4, atol=1e-6)


def test_two_rank_history_has_one_part_folder_per_rank_and_global_weights(two_rank_results):
    import pyarrow.dataset as pads

    folder = two_rank_results[0]['history']
    assert sorted(p.name for p in folder.iterdir()) == ['rank0', 'rank1']
    df = pads.dataset(str(folder), format='parquet').to_table().to_pandas()
    assert len(df) == 3 * 8
    assert sorted(df.sample_id) == sorted(list(range(24)))
    assert df.groupby('rank').sample_id.apply(lambda s: set(s % 2)).to_dict() == {0: {0}, 1: {1}}
    assert df.groupby('step').weight.sum().to_numpy() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    for step, group in df.groupby('step'):
        expected = compute_sample_weights(
            torch.tensor(group.loss.to_numpy()), 'linupper' if step >= 1 else 'uniform', 0.7,
        )
        torch.testing.assert_close(torch.tensor(group.weight.to_numpy()), expected)
