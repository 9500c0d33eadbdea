"""LossHistory: Parquet rows per sample and step, crash/resume consistency, uploads."""

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from lm_helpers import TokenDataset, make_trainer, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting, compute_sample_weights
from reweigh.callbacks import LossHistory
from reweigh.history.format import HISTORY_SCHEMA, list_parts


class IdDataset(TokenDataset):
    """TokenDataset whose samples carry a sample id and a domain (even ids: the easy domain 0)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, 'sample_id': torch.tensor(1000 + i), 'domain': torch.tensor(i % 2)}


def _loader(batch_size=8):
    return DataLoader(IdDataset(), batch_size=batch_size, shuffle=False)


def _read(folder):
    return pads.dataset(str(folder), format='parquet').to_table().sort_by([('step', 'ascending'), ('sample_id', 'ascending')])


def test_rows_per_step_and_sample_with_weights_summing_to_one(tmp_path):
    history = LossHistory(folder=str(tmp_path / '{run_name}'), flush_interval='2ba')
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', r=0.5, warmup='2ba')], callbacks=[history],
        train_dataloader=_loader(), max_duration='5ba', run_name='rows',
    )
    trainer.fit()
    table = _read(tmp_path / 'rows')
    assert table.schema.remove_metadata() == HISTORY_SCHEMA
    assert table.num_rows == 5 * 8
    rows = table.to_pylist()
    assert [r['step'] for r in rows] == [s for s in range(5) for _ in range(8)]
    assert [r['sample_id'] for r in rows] == [1000 + i for i in range(40)]
    assert [r['domain'] for r in rows] == [i % 2 for i in range(40)]
    assert all(r['tokens'] == 15 and r['rank'] == 0 and r['microbatch'] == 0 for r in rows)
    assert all(r['mix'] == -1 for r in rows)  # a stream that does not mix online
    assert [r['active'] for r in rows[::8]] == [False, False, True, True, True]
    for step in range(5):
        losses = torch.tensor([r['loss'] for r in rows if r['step'] == step])
        weights = torch.tensor([r['weight'] for r in rows if r['step'] == step])
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
        expected = compute_sample_weights(losses, 'linupper' if step >= 2 else 'uniform', 0.5)
        torch.testing.assert_close(weights, expected)
    # part files follow the flush interval: steps 0-1, 2-3, and the rest at fit end
    assert [(a, b) for a, b, _ in list_parts(tmp_path / 'rows' / 'rank0')] == [(0, 1), (2, 3), (4, 4)]
    meta = json.loads(pq.read_schema(list_parts(tmp_path / 'rows' / 'rank0')[0][2]).metadata[b'reweigh'])
    assert meta['strategy'] == 'linupper' and meta['r'] == 0.5 and meta['warmup'] == '2ba'


def test_microbatch_weights_sum_to_one_each(tmp_path):
    history = LossHistory(folder=str(tmp_path / 'h'))
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', warmup=0)], callbacks=[history],
        train_dataloader=_loader(), max_duration='2ba', device_train_microbatch_size=4,
    )
    trainer.fit()
    df = _read(tmp_path / 'h').to_pandas()
    sums = df.groupby(['step', 'microbatch']).weight.sum()
    assert list(sums.index) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sums.to_numpy() == pytest.approx([1.0] * 4, abs=1e-6)


def test_resume_drops_rows_of_the_interrupted_attempt(tmp_path):
    ckpt = tmp_path / 'ckpt'

    def run(**kwargs):
        history = LossHistory(folder=str(tmp_path / 'h'), flush_interval='100ba')
        trainer = make_trainer(
            tiny_gpt2(), [LossReweighting('linupper', warmup='1ba')], callbacks=[history],
            train_dataloader=_loader(), max_duration='4ba', **kwargs,
        )
        return trainer

    first = run(save_folder=str(ckpt), save_interval='2ba', save_filename='ba{batch}.pt')
    first.fit(duration='3ba')  # checkpoint at step 2; step 2's rows (batch index 2) also written
    first.close()
    assert set(_read(tmp_path / 'h').column('step').to_pylist()) == {0, 1, 2}
    resumed = run(load_path=str(ckpt / 'ba2.pt'))
    resumed.fit()
    steps = _read(tmp_path / 'h').column('step').to_pylist()
    assert steps == [s for s in range(4) for _ in range(8)]  # 2 rewritten once, no duplicates


def test_checkpoint_flushes_history_to_disk(tmp_path):
    history = LossHistory(folder=str(tmp_path / 'h'), flush_interval='1000ba')
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting(warmup=0)], callbacks=[history], train_dataloader=_loader(),
        max_duration='3ba', save_folder=str(tmp_path / 'ckpt'), save_interval='2ba',
    )
    trainer.fit(duration='2ba')
    # the checkpoint at batch 2 forced a flush although the flush interval is 1000 batches
    parts = list_parts(tmp_path / 'h' / 'rank0')
    assert parts and parts[0][:2] == (0, 1)


def test_a_baseline_without_the_algorithm_records_uniform_weights_and_trains_as_plain(tmp_path):
    torch.manual_seed(0)
    plain = tiny_gpt2()
    recorded = tiny_gpt2()
    recorded.load_state_dict(plain.state_dict())
    make_trainer(plain, [], train_dataloader=_loader(), max_duration='3ba').fit()
    from composer.loggers import InMemoryLogger

    history, logged = LossHistory(folder=str(tmp_path / '{run_name}')), InMemoryLogger()
    make_trainer(recorded, [], callbacks=[history], train_dataloader=_loader(), max_duration='3ba',
                 run_name='baseline', loggers=[logged]).fit()
    for a, b in zip(plain.parameters(), recorded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # recording leaves training untouched
    rows = _read(tmp_path / 'baseline').to_pylist()
    assert len(rows) == 3 * 8 and not any(r['active'] for r in rows)
    assert [r['weight'] for r in rows] == pytest.approx([1 / 8] * 24)
    assert [r['sample_id'] for r in rows] == [1000 + i for i in range(24)]
    meta = json.loads(pq.read_schema(list_parts(tmp_path / 'baseline' / 'rank0')[0][2]).metadata[b'reweigh'])
    assert meta['strategy'] == 'uniform' and meta['run_name'] == 'baseline' and 'domains' not in meta
    # the baseline logs the core's statistics as the algorithm does: its mean_loss is the rows' sample mean
    mean_loss = [value for _, value in logged.data['loss_reweighting/mean_loss']]
    assert mean_loss == pytest.approx([sum(r['loss'] for r in rows[8 * s:8 * s + 8]) / 8 for s in range(3)], rel=1e-5)
    assert [value for _, value in logged.data['loss_reweighting/active']] == [0.0] * 3


def test_batches_without_ids_are_recorded_with_minus_one(tmp_path):
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting('uniform')], callbacks=[LossHistory(folder=str(tmp_path))], max_duration='1ba',
    )
    with pytest.warns(UserWarning, match='no "sample_id"'):
        trainer.fit()
    table = _read(tmp_path)
    assert set(table.column('sample_id').to_pylist()) == {-1} and table.num_rows == 8


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [({'flush_interval': '0ba'}, 'positive number of batches'),
     ({'flush_interval': '2ep'}, "flush_interval unit 'ep' not allowed here; use one of ba"),
     ({'max_queued_chunks': 0}, 'max_queued_chunks must be > 0')],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossHistory(**kwargs)


def test_finished_parts_are_uploaded_to_object_storage(tmp_path, s3_env):
    import boto3

    history = LossHistory(folder=str(tmp_path / 'h'), flush_interval='2ba', upload_to='s3://reweigh/runs/{run_name}/history')
    trainer = make_trainer(
        tiny_gpt2(), [LossReweighting(warmup=0)], callbacks=[history], train_dataloader=_loader(),
        max_duration='3ba', run_name='up',
    )
    trainer.fit()
    objects = boto3.client('s3', endpoint_url=s3_env).list_objects_v2(Bucket='reweigh', Prefix='runs/up/')['Contents']
    assert sorted(o['Key'] for o in objects) == [
        'runs/up/history/rank0/part-000000000-000000001.parquet',
        'runs/up/history/rank0/part-000000002-000000002.parquet',
    ]
    local = (tmp_path / 'h' / 'rank0' / 'part-000000000-000000001.parquet').read_bytes()
    remote = boto3.client('s3', endpoint_url=s3_env).get_object(
        Bucket='reweigh', Key='runs/up/history/rank0/part-000000000-000000001.parquet')['Body'].read()
    assert remote == local
