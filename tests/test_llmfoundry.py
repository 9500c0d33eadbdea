"""reweigh from llm-foundry 0.22: its registries find reweigh's objects, and its own `llmfoundry train` runs a
YAML with reweigh's algorithm, callback, logger and dataloader.

These tests need llm-foundry, which pins other versions than reweigh's main environment; they run in
``.venv-foundry`` (``bash scripts/setup_foundry.sh``), and skip elsewhere unless ``REWEIGH_REQUIRE_LLMFOUNDRY=1``
(set by ``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

if os.environ.get('REWEIGH_REQUIRE_LLMFOUNDRY') != '1':
    pytest.importorskip('llmfoundry')

YAML = Path(__file__).resolve().parents[1] / 'yamls' / 'llmfoundry-mpt-tiny.yaml'


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    from reweigh.pipeline import prepare_default_corpus

    root = tmp_path_factory.mktemp('foundry') / 'data'
    prepare_default_corpus(root, max_bytes_per_domain=30_000, vocab_size=512, seq_len=64, progress=False)
    return root


def test_the_registries_find_reweigh_by_entry_point(dataset):
    from llmfoundry import registry
    from llmfoundry.data.dataloader import build_dataloader
    from llmfoundry.utils.builders import build_algorithm, build_callback, build_logger

    from reweigh.algorithms import LossReweighting
    from reweigh.callbacks import LossHistory, MetricsLog

    algorithm = build_algorithm('loss_reweighting', {'strategy': 'quadratic', 'r': 0.5, 'warmup': '10ba'})
    assert isinstance(algorithm, LossReweighting) and (algorithm.strategy, algorithm.r) == ('quadratic', 0.5)
    assert isinstance(build_callback('loss_history', {'folder': 'h'}), LossHistory)
    assert isinstance(build_logger('metrics_log', {'path': 'm.jsonl'}), MetricsLog)
    assert 'reweigh_streaming' in registry.dataloaders
    spec = build_dataloader({'name': 'reweigh_streaming', 'dataset': {'local': str(dataset), 'split': 'val',
                                                                         'domains': ['docs']}, 'drop_last': False},
                            tokenizer=None, device_batch_size=4)
    batches = list(spec.dataloader)
    assert {int(d) for b in batches for d in b['domain']} == {1}  # docs only, with ids: the history can name them
    assert all(int(i) >> 47 & 1 for b in batches for i in b['sample_id'])  # the val split's bit


def _train(dataset, out, yaml_path=YAML, *overrides):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'WANDB_MODE': 'disabled'}
    command = [str(Path(sys.executable).with_name('llmfoundry')), 'train', str(yaml_path),
               f'variables.data_local={dataset}', 'variables.max_seq_len=64',
               'max_duration=6ba', 'eval_interval=6ba',
               'algorithms.loss_reweighting.warmup=2ba', f'callbacks.loss_history.folder={out}/history',
               'callbacks.loss_history.flush_interval=2ba', f'loggers.metrics_log.path={out}/metrics.jsonl',
               'console_log_interval=1ba', *overrides]
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def test_llmfoundry_train_runs_reweigh_from_yaml(dataset, tmp_path):
    from reweigh.pipeline import SampleLookup

    _train(dataset, tmp_path, YAML, 'model.vocab_size=512', 'model.d_model=32', 'model.n_heads=2', 'model.n_layers=1')
    history = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / 'history' / 'rank0').glob('*.parquet')))
    assert history.num_rows == 6 * 8 and sorted(set(history['step'].to_pylist())) == list(range(6))
    lookup = SampleLookup(dataset)
    assert all(lookup.domain(i) in ('code', 'docs', 'boilerplate') for i in history['sample_id'].to_pylist()[:8])
    rows = history.to_pylist()
    assert [r['active'] for r in rows if r['step'] in (0, 1)] == [False] * 16
    assert all(r['active'] for r in rows if r['step'] >= 2)
    for step in range(6):  # one rank: each step's weights sum to 1, and differ after warm-up
        weights = [r['weight'] for r in rows if r['step'] == step]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert (max(weights) - min(weights) > 1e-4) == (step >= 2)
    lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    train = [line for line in lines if line['kind'] == 'train']
    assert [line['step'] for line in train] == list(range(1, 7)) and train[-1]['loss_reweighting/active'] == 1.0
    assert {line['domain'] for line in lines if line['kind'] == 'eval'} == {'code', 'docs', 'boilerplate'}
    # the loader's domain names are in the history, so `reweigh analyze` of it (no summary.json) names them
    analyzed = subprocess.run([str(Path(sys.executable).with_name('reweigh')), 'analyze', str(tmp_path / 'history'), '--out',
                               str(tmp_path / 'analysis')], capture_output=True, text=True, check=True).stdout
    assert analyzed.split('most deprioritised domain: ')[1].split()[0] in ('code', 'docs', 'boilerplate'), analyzed


def test_hf_causal_lm_from_a_local_config_takes_the_generic_path(dataset, tmp_path):
    import yaml
    from transformers import GPT2Config

    model_dir = tmp_path / 'gpt2'
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=64).save_pretrained(model_dir)
    config = yaml.safe_load(YAML.read_text())
    config['model'] = {'name': 'hf_causal_lm', 'pretrained': False, 'pretrained_model_name_or_path': str(model_dir)}
    (tmp_path / 'hf.yaml').write_text(yaml.safe_dump(config))
    _train(dataset, tmp_path, tmp_path / 'hf.yaml')
    history = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / 'history' / 'rank0').glob('*.parquet')))
    assert history.num_rows == 6 * 8 and all(history.filter(pa.compute.greater_equal(history['step'], 2))['active'].to_pylist())
    shutil.rmtree(model_dir)
