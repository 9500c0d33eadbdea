"""The run folder (train/run_folder.py) and the config keys that do not make an arm (train/schema.py)."""

import dataclasses
import json

import pytest
from omegaconf import OmegaConf
from test_compare import _config, _write_run

from reweigh.analysis.compare import group_arms
from reweigh.analysis.runs import load_run, metrics_line
from reweigh.train.run_folder import RunFolder
from reweigh.train.schema import TrainConfig, not_arm, not_arm_keys


def _curves(offset=0.0):
    return {'code': lambda s: 5 - s / 250 + offset}


def test_runs_that_differ_only_in_keys_declared_not_arm_are_one_arm(tmp_path):
    base = _config(17, 'linupper', 'a')
    same = _config(18, 'linupper', 'b', save_folder='s3://bucket/b', device='cpu', progress_bar=False,
                   train_loader={'num_workers': 4, 'dataset': {'local': 'data/default', 'shuffle_seed': 3}},
                   history={'enabled': True, 'folder': '/tmp/h', 'flush_interval': '10ba'},
                   loggers={'file': {'filename': 'runs/b/log.txt'}})
    base['train_loader'] = {'num_workers': 0, 'dataset': {'local': 'data/default'}}
    base['history'] = {'enabled': True}
    other_lr = dict(base, run_name='c', optimizer={'lr': 0.001, 'betas': [0.9, 0.95]})
    runs = [load_run(_write_run(tmp_path / name, config, _curves()))
            for name, config in (('a', base), ('b', same), ('c', other_lr))]
    arms = group_arms(runs)
    assert sorted(len(arm.runs) for arm in arms) == [1, 2]
    assert {r.name for arm in arms if len(arm.runs) == 2 for r in arm.runs} == {'a', 'b'}


def test_a_remote_datasets_local_cache_is_not_an_arm_but_a_local_dataset_folder_is(tmp_path):
    def loader(local, remote=None):
        return {'train_loader': {'dataset': {'local': local, 'remote': remote}}}

    configs = {'a': loader('/cache/a', 's3://b/data'), 'b': loader('/cache/b', 's3://b/data'),
               'c': loader('data/one'), 'd': loader('data/two')}
    runs = [load_run(_write_run(tmp_path / name, _config(seed, 'linupper', name, **extra), _curves()))
            for seed, (name, extra) in enumerate(configs.items())]
    assert sorted(sorted(r.name for r in arm.runs) for arm in group_arms(runs)) == [['a', 'b'], ['c'], ['d']]


def test_not_arm_keys_name_fields_of_the_schema_and_a_new_field_declares_itself():
    schema = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(TrainConfig), {'eval_loader': {}}))
    keys = not_arm_keys()
    assert {'seed', 'run_name', 'save_folder', 'history.folder', 'train_loader.num_workers'} <= set(keys)
    assert not {'optimizer.lr', 'algorithms.loss_reweighting', 'max_duration', 'history.enabled'} & set(keys)
    for key in keys:  # every one is a key of the config
        *parents, leaf = key.split('.')
        node = schema
        for parent in parents:
            node = node[parent]
        assert leaf in node, key

    @dataclasses.dataclass
    class WithExtra(TrainConfig):
        notes: str = not_arm(default='')

    assert not_arm_keys(WithExtra) == (*keys, 'notes')


def test_what_run_folder_writes_the_analysis_readers_find(tmp_path):
    folder = RunFolder(tmp_path / 'run')
    folder.write_config('run_name: x\nseed: 17\n')
    with open(folder.metrics, 'w') as f:
        f.write(metrics_line('eval', 10, 80, {'loss': 5.0}, domain='code') + '\n')
    run = load_run(folder.root)
    assert (run.name, run.config['seed'], run.eval['loss'].to_pylist()) == ('x', 17, [5.0])
    assert folder.history == str(tmp_path / 'run' / 'history')
    assert folder.checkpoints == str(tmp_path / 'run' / 'checkpoints')
    assert RunFolder('gs://bucket/runs/x/').metrics == 'gs://bucket/runs/x/metrics.jsonl'


def test_finished_means_a_summary_and_the_same_config(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_config('seed: 17\n')
    assert not folder.finished('seed: 17\n')
    folder.write_summary({'run_name': 'x', 'steps': 3, 'eval': {}})
    assert folder.finished('seed: 17\n') and not folder.finished('seed: 18\n')
    assert json.loads((tmp_path / 'summary.json').read_text())['steps'] == 3 == folder.read_summary()['steps']


def test_locate_history_of_a_run_folder_a_history_folder_or_a_uri(tmp_path):
    run = tmp_path / 'run'
    (run / 'history').mkdir(parents=True)
    assert RunFolder(run).locate_history() == (str(run / 'history'), {})
    RunFolder(run).write_summary({'run_name': 'x', 'history': '/elsewhere/history'})
    assert RunFolder(run).locate_history() == ('/elsewhere/history', {'run_name': 'x', 'history': '/elsewhere/history'})
    assert RunFolder(run / 'history').locate_history() == (str(run / 'history'), {})
    assert RunFolder('s3://b/runs/x/').locate_history() == ('s3://b/runs/x/history', {})
    assert RunFolder('s3://b/runs/x/history').locate_history() == ('s3://b/runs/x/history', {})
    with pytest.raises(ValueError, match=r"'/no/such/run/' does not exist"):
        RunFolder('/no/such/run/').locate_history()
    (run / 'summary.json').write_text('{"cut short')
    with pytest.raises(ValueError, match=r'summary.json cannot be read'):
        RunFolder(run).locate_history()
