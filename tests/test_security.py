"""Nothing read from storage runs code: checkpoints, shard indexes, tokenizers, configs, names, secrets.

Every attack stores a payload that, if it ran, would create a marker file; each test asserts the marker
is absent and the error is clear. The ``*_payload_is_live`` tests show that the same files do run the
payload when loaded the unsafe way (in a subprocess), so a missing marker means something.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_train_cli import TINY_CPU, _overrides

from reweigh.analysis import HISTORY_SCHEMA
from reweigh.cli.main import main
from reweigh.models import build_causal_lm
from reweigh.pipeline import SampleLookup, build_train_dataloader, read_manifest
from reweigh.pipeline.ids import make_sample_id
from reweigh.pipeline.sources import parse_domain_arg
from reweigh.safety import UnsafeCheckpointError, load_checkpoint, safe_checkpoint_loading
from reweigh.train.config import ConfigError, load_config


class Payload:
    """Pickles to ``os.system('touch MARKER')``: what an attacker stores in a checkpoint or a shard."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}',)


@dataclasses.dataclass
class CustomState:
    """A type of a user's own, for the extra_globals test."""

    value: int = 0


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state': {'model': {}, 'run_name': 'x', 'payload': Payload(marker)}, 'rng': []}, path)
    return path


def _run_python(code: str, **env: str) -> None:
    subprocess.run([sys.executable, '-c', code], check=False, capture_output=True, timeout=300,
                   env={**os.environ, **env})


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_payload_is_live(tmp_path):
    marker = tmp_path / 'marker'
    evil = _evil_checkpoint(tmp_path / 'evil.pt', marker)
    _run_python(f'import torch; torch.load({str(evil)!r}, weights_only=False)')
    assert marker.exists()


def test_train_autoresume_refuses_a_crafted_local_checkpoint(small_dataset, streaming_shm, tmp_path, capsys):
    data_root, _ = small_dataset
    run_dir, marker = tmp_path / 'run', tmp_path / 'marker'
    _evil_checkpoint(run_dir / 'checkpoints' / 'ep0-ba3-rank0.pt', marker)
    (run_dir / 'checkpoints' / 'latest-rank0.pt').symlink_to('ep0-ba3-rank0.pt')
    assert main(['train', str(TINY_CPU), *_overrides(data_root, run_dir, autoresume='true')]) == 2
    _one_error_line(capsys.readouterr().err, 'refused to load checkpoint', 'latest-rank0.pt -> ep0-ba3-rank0.pt',
                    "'posix.system'",
                    'nothing in it was run')
    assert not marker.exists()


def test_train_load_path_refuses_a_crafted_checkpoint(small_dataset, streaming_shm, tmp_path, capsys):
    data_root, _ = small_dataset
    marker = tmp_path / 'marker'
    evil = _evil_checkpoint(tmp_path / 'shared' / 'init.pt', marker)
    assert main(['train', str(TINY_CPU), *_overrides(data_root, tmp_path / 'run', load_path=str(evil))]) == 2
    _one_error_line(capsys.readouterr().err, 'refused to load checkpoint', "'posix.system'")
    assert not marker.exists()


def test_train_autoresume_refuses_a_crafted_checkpoint_in_the_bucket(small_dataset, streaming_shm, s3_env, tmp_path,
                                                                    capsys):
    import boto3

    data_root, _ = small_dataset
    marker = tmp_path / 'marker'
    evil = _evil_checkpoint(tmp_path / 'evil.pt', marker)
    client = boto3.client('s3', endpoint_url=s3_env)
    client.upload_file(str(evil), 'reweigh', 'runs/owned/checkpoints/ep0-ba3-rank0.pt')
    client.put_object(Bucket='reweigh', Key='runs/owned/checkpoints/latest-rank0.pt.symlink',
                      Body=b'runs/owned/checkpoints/ep0-ba3-rank0.pt')
    overrides = _overrides(data_root, tmp_path / 'run', run_name='owned', autoresume='true',
                           save_folder='s3://reweigh/runs/{run_name}/checkpoints')
    assert main(['train', str(TINY_CPU), *overrides]) == 2
    _one_error_line(capsys.readouterr().err, 'refused to load checkpoint', "'posix.system'")
    assert not marker.exists()


def test_a_bucket_pointer_that_leaves_the_checkpoint_folder_is_refused(small_dataset, streaming_shm, s3_env,
                                                                        tmp_path, capsys):
    import boto3

    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=s3_env)
    client.put_object(Bucket='reweigh', Key='runs/pointer/checkpoints/latest-rank0.pt.symlink',
                      Body=b'runs/pointer/../../elsewhere/ep0-ba3-rank0.pt')
    overrides = _overrides(data_root, tmp_path / 'run', run_name='pointer', autoresume='true',
                           save_folder='s3://reweigh/runs/{run_name}/checkpoints')
    assert main(['train', str(TINY_CPU), *overrides]) == 2
    _one_error_line(capsys.readouterr().err, 'latest-rank0.pt.symlink', 'not a checkpoint of that folder')
    assert not list((tmp_path / 'run').rglob('*.pt'))


def test_python_api_refuses_a_crafted_checkpoint_in_composer_trainer(tmp_path):
    from composer import Trainer

    marker = tmp_path / 'marker'
    evil = _evil_checkpoint(tmp_path / 'evil.pt', marker)
    model = build_causal_lm('gpt2', n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*'posix\.system'") as info:
        with safe_checkpoint_loading():
            Trainer(model=model, load_path=str(evil), device='cpu')
    assert info.value.refused == 'posix.system' and info.value.path == str(evil)
    assert not marker.exists()
    assert torch.load.__name__ == 'load'  # torch.load is itself again after the block
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_real_checkpoints_load_under_the_allow_list_and_resume(small_dataset, streaming_shm, tmp_path, capsys):
    """Everything a reweigh run puts in a checkpoint (every callback and logger the config offers) is allowed."""
    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    overrides = _overrides(
        data_root, run_dir, autoresume='true', max_duration='4ba', save_interval='2ba', eval_interval='4ba',
        callbacks='{speed_monitor: {window_size: 2}, lr_monitor: {}, memory_monitor: {}, runtime_estimator: {}}',
        loggers=f'{{in_memory: {{}}, file: {{filename: {run_dir / "log.txt"}}}}}',
        **{'algorithms.loss_reweighting.r_schedule': '{name: linear, alpha_i: 4.0, alpha_f: 1.0, t_max: 4ba}'},
    )
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    latest = run_dir / 'checkpoints' / 'latest-rank0.pt'
    state = load_checkpoint(latest)['state']
    assert state['run_name'] == 'tiny-cpu' and state['algorithms'][0][1]['strategy'] == 'linupper'
    # ...and autoresume through the restricted loader continues the run.
    assert main(['train', str(TINY_CPU), *overrides, 'max_duration=6ba']) == 0
    assert 'finished tiny-cpu after 6 steps' in capsys.readouterr().out


def test_extra_globals_admit_a_users_own_type(tmp_path):
    path = tmp_path / 'custom.pt'
    torch.save({'callback': CustomState(3)}, path)
    with pytest.raises(UnsafeCheckpointError, match='CustomState'):
        load_checkpoint(path)
    assert load_checkpoint(path, extra_globals=[CustomState])['callback'] == CustomState(3)


def test_sharded_checkpoint_metadata_is_read_as_data(tmp_path):
    """A torch.distributed.checkpoint (FSDP sharded) folder: its .metadata pickle is restricted too."""
    import pickle

    import torch.distributed.checkpoint as dcp

    folder, marker = tmp_path / 'sharded', tmp_path / 'marker'
    with pytest.warns(UserWarning):
        dcp.save({'model': {'w': torch.arange(6.0).reshape(3, 2)}, 'step': 5}, checkpoint_id=folder, no_dist=True)
    loaded = {'model': {'w': torch.zeros(3, 2)}, 'step': 0}
    with safe_checkpoint_loading():
        dcp.load(loaded, checkpoint_id=folder, no_dist=True)
    assert torch.equal(loaded['model']['w'], torch.arange(6.0).reshape(3, 2)) and loaded['step'] == 5

    (folder / '.metadata').write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(BaseException) as info:  # torch wraps it in a CheckpointException (a BaseException)
        with safe_checkpoint_loading():
            dcp.load(loaded, checkpoint_id=folder, no_dist=True)
    refused = [e for e, _ in getattr(info.value, 'failures', {}).values() if isinstance(e, UnsafeCheckpointError)]
    assert isinstance(info.value, UnsafeCheckpointError) or refused, repr(info.value)
    assert (refused or [info.value])[0].refused == 'posix.system'
    assert (refused or [info.value])[0].path.endswith('.metadata')
    assert not marker.exists()


def test_a_refused_sharded_checkpoint_is_one_error_naming_it(tmp_path, monkeypatch):
    """Composer loads a sharded checkpoint through torch.distributed.checkpoint, which wraps errors in a
    CheckpointException (a BaseException, so a traceback in the CLI); the refusal inside is raised instead."""
    import pickle

    import composer.utils.checkpoint as composer_checkpoint
    import torch.distributed.checkpoint as dcp

    folder, marker = tmp_path / 'ep0-ba4', tmp_path / 'marker'
    with pytest.warns(UserWarning):
        dcp.save({'w': torch.ones(2)}, checkpoint_id=folder, no_dist=True)
    (folder / '.metadata').write_bytes(pickle.dumps(Payload(marker)))

    def sharded_load(path, *args, **kwargs):  # what Composer's load_checkpoint does for a sharded folder
        dcp.load({'w': torch.zeros(2)}, checkpoint_id=path, no_dist=True)

    monkeypatch.setattr(composer_checkpoint, 'load_checkpoint', sharded_load)
    with pytest.raises(UnsafeCheckpointError, match=f"checkpoint '{folder}'.*'posix.system'"):
        with safe_checkpoint_loading():
            composer_checkpoint.load_checkpoint(str(folder), None, None)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ shards


def _copy(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns('*.mds'))  # compressed shards only, like a bucket
    return dest


def _pkl_stream(dataset: Path, marker: Path, declare_in_manifest: bool = False) -> Path:
    """Replace train/code of ``dataset`` by a stream whose doc_ids column is ``pkl`` holding the payload."""
    from streaming import MDSWriter

    stream = dataset / 'train' / 'code'
    shutil.rmtree(stream)
    columns = {'input_ids': 'ndarray:uint16', 'sample_id': 'int64', 'domain': 'int32', 'doc_ids': 'pkl'}
    with MDSWriter(out=str(stream), columns=columns, compression='zstd', hashes=['xxh64']) as writer:
        for i in range(16):
            writer.write({'input_ids': np.arange(64, dtype=np.uint16), 'sample_id': make_sample_id(0, 'train', i),
                          'domain': 0, 'doc_ids': Payload(marker)})
    if declare_in_manifest:
        manifest = json.loads((dataset / 'manifest.json').read_text())
        manifest['mds']['columns']['doc_ids'] = 'pkl'
        (dataset / 'manifest.json').write_text(json.dumps(manifest))
    return dataset


def test_shard_payload_is_live(small_dataset, tmp_path):
    marker = tmp_path / 'marker'
    evil = _pkl_stream(_copy(small_dataset[0], tmp_path / 'evil'), marker)
    from streaming.base.compression import decompress

    for shard in (evil / 'train' / 'code').glob('*.zstd'):  # Streaming's LocalDataset reads raw shards
        shard.with_suffix('').write_bytes(decompress('zstd', shard.read_bytes()))
    _run_python('from streaming.base.local import LocalDataset; '
                f'LocalDataset(local={str(evil)!r}, split="train/code").get_item(0)')
    assert marker.exists()


@pytest.mark.parametrize('declare_in_manifest', [False, True], ids=['index-only', 'index-and-manifest'])
def test_pkl_shards_are_refused_by_train_analyze_and_the_python_api(small_dataset, streaming_shm, tmp_path, capsys,
                                                                     declare_in_manifest):
    marker = tmp_path / 'marker'
    evil = _pkl_stream(_copy(small_dataset[0], tmp_path / 'evil'), marker, declare_in_manifest)
    where = 'manifest.json: mds.columns' if declare_in_manifest else 'train/code/index.json'

    assert main(['train', str(TINY_CPU), *_overrides(evil, tmp_path / 'run')]) == 2
    _one_error_line(capsys.readouterr().err, where, "'doc_ids'", "'pkl'")

    # `reweigh analyze` of a run that (by someone else's hand) trained on it: snippets need the shards.
    run = tmp_path / 'analyzed'
    (run / 'history' / 'rank0').mkdir(parents=True)
    ids = [make_sample_id(0, 'train', i) for i in range(8)]
    rows = {'step': [0] * 8, 'microbatch': [0] * 8, 'rank': [0] * 8, 'sample_id': ids, 'domain': [0] * 8,
            'tokens': [63] * 8, 'mix': [-1] * 8, 'loss': [float(i) for i in range(8)], 'weight': [0.125] * 8, 'r': [1.0] * 8,
            'active': [True] * 8}
    pq.write_table(pa.table(rows, schema=HISTORY_SCHEMA), run / 'history' / 'rank0' / 'part-000000000-000000000.parquet')
    (run / 'summary.json').write_text(json.dumps({'run_name': 'x', 'history': str(run / 'history'), 'dataset': str(evil)}))
    assert main(['analyze', str(run)]) == 2
    _one_error_line(capsys.readouterr().err, where, "'pkl'")

    with pytest.raises(ValueError, match=f"{where}.*'doc_ids'.*'pkl'"):
        SampleLookup(evil).text(ids[0])
    with pytest.raises(ValueError, match=f"{where}.*'doc_ids'.*'pkl'"):
        next(iter(build_train_dataloader(evil, tmp_path / 'cache', domains=['code'], batch_size=4)))
    assert not marker.exists()


def _edit_index(dataset: Path, edit) -> Path:
    path = dataset / 'train' / 'code' / 'index.json'
    path.write_text(edit(path.read_text()))
    return dataset


def _json_edit(change):
    def edit(text: str) -> str:
        index = json.loads(text)
        change(index['shards'][0])
        return json.dumps(index)
    return edit


def _drop_column(shard):
    i = shard['column_names'].index('doc_ids')
    for key in ('column_names', 'column_encodings', 'column_sizes'):
        del shard[key][i]


@pytest.mark.parametrize(('edit', 'message'), [
    (_json_edit(_drop_column), r"column\(s\) \['doc_ids'\] missing"),
    (lambda text: text[: len(text) // 2], 'cannot be read as an MDS index'),
    (_json_edit(lambda s: s['zip_data'].update(basename='../../../../outside.mds.zstd')), 'may not become a path'),
    (_json_edit(lambda s: s.update(compression='rot13')), "unknown compression 'rot13'"),
    (_json_edit(lambda s: s.update(format='xsv')), 'not an MDS shard'),
], ids=['missing-column', 'unparsable', 'path-escape', 'compression', 'format'])
def test_bad_shard_indexes_are_refused_with_a_clear_error(small_dataset, streaming_shm, tmp_path, edit, message):
    bad = _edit_index(_copy(small_dataset[0], tmp_path / 'bad'), edit)
    with pytest.raises(ValueError, match=f'train/code/index.json.*{message}'):
        SampleLookup(bad).text(make_sample_id(0, 'train', 0))
    with pytest.raises(ValueError, match=f'train/code/index.json.*{message}'):
        next(iter(build_train_dataloader(bad, tmp_path / 'cache', domains=['code'], batch_size=4)))
    assert not (tmp_path / 'outside.mds.zstd').exists() and not (tmp_path / 'outside.mds').exists()


# ------------------------------------------------------------------------------------------ names and files


@pytest.mark.parametrize('value', ['..', '../x', '/etc', 'a/b', 'a\\\\b', 'bad\\x07name', '.hidden', ' x'])
def test_run_names_cannot_escape_the_runs_folder(value, tmp_path):
    with pytest.raises(ConfigError, match="config key 'run_name'.*may not become a path"):
        load_config(TINY_CPU, [f'run_name="{value}"'])


def test_domain_names_cannot_escape_the_dataset(small_dataset, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"config key 'train_loader.dataset.proportions.\.\.'.*may not become a path"):
        load_config(TINY_CPU, ['train_loader.dataset.proportions={"..": 1}'])
    with pytest.raises(ValueError, match=r"domain name '\.\.' may not become a path"):
        parse_domain_arg(f'..={tmp_path}')
    assert main(['prepare', '--domain', f'../up={tmp_path}', '--out', str(tmp_path / 'out')]) == 2
    _one_error_line(capsys.readouterr().err, "domain name '../up' may not become a path")

    for field, value, message in [('domain', '../../x', "domain name '../../x'"),
                                  ('tokenizer_file', '../../../.bashrc', "tokenizer file '../../../.bashrc'"),
                                  ('tokenizer_path', '/etc', "tokenizer path '/etc'")]:
        bad = _copy(small_dataset[0], tmp_path / f'bad-{field}')
        manifest = json.loads((bad / 'manifest.json').read_text())
        if field == 'domain':
            manifest['domains'][0]['name'] = value
        elif field == 'tokenizer_file':
            manifest['tokenizer']['files'].append(value)
        else:
            manifest['tokenizer']['path'] = value
        (bad / 'manifest.json').write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=f'{message}.*may not become a path'):
            read_manifest(bad)


def _evil_tokenizer(folder: Path, marker: Path) -> Path:
    config = json.loads((folder / 'tokenizer_config.json').read_text())
    config['auto_map'] = {'AutoTokenizer': ['tokenization_evil.EvilTokenizer', None]}
    config['tokenizer_class'] = 'EvilTokenizer'
    (folder / 'tokenizer_config.json').write_text(json.dumps(config))
    (folder / 'tokenization_evil.py').write_text(
        f'import os\nos.system({f"touch {shlex.quote(str(marker))}"!r})\n'
        'from transformers import PreTrainedTokenizerFast\n\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n')
    return folder


def test_tokenizer_payload_is_live(small_dataset, tmp_path):
    marker = tmp_path / 'marker'
    folder = _evil_tokenizer(_copy(small_dataset[0], tmp_path / 'evil') / 'tokenizer', marker)
    _run_python(f'from transformers import AutoTokenizer; AutoTokenizer.from_pretrained({str(folder)!r}, '
                'trust_remote_code=True)', HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1')
    assert marker.exists()


def test_a_dataset_tokenizer_with_code_is_refused(small_dataset, streaming_shm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    marker = tmp_path / 'marker'
    evil = _copy(small_dataset[0], tmp_path / 'evil')
    _evil_tokenizer(evil / 'tokenizer', marker)
    with pytest.raises(ValueError, match='needs code of its own'):
        _ = SampleLookup(evil).tokenizer
    assert main(['train', str(TINY_CPU), *_overrides(evil, tmp_path / 'run')]) == 2
    _one_error_line(capsys.readouterr().err, 'needs code of its own')
    assert not marker.exists()


def test_yaml_config_tags_do_not_run(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'cfg.yaml'
    path.write_text(f'run_name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match='cannot read config'):
        load_config(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ secrets


def test_credentials_appear_in_no_output_and_no_file(small_dataset, streaming_shm, s3_env, tmp_path, capsys,
                                                      monkeypatch):
    """A run and its analysis, with a remote save_folder: no secret in the console, logs, summary,
    checkpoints (local copies and uploads), history parts or the report."""
    import boto3

    secrets = {'AWS_SECRET_ACCESS_KEY': 'reweigh-fake-secret-key-4f1c9a', 'AWS_SESSION_TOKEN': 'reweigh-fake-token-77e2d0',
               'sa_private_key': 'reweigh-fake-service-account-key-b3a8e6'}
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', secrets['AWS_SECRET_ACCESS_KEY'])
    monkeypatch.setenv('AWS_SESSION_TOKEN', secrets['AWS_SESSION_TOKEN'])
    key_file = tmp_path / 'credentials' / 'service-account.json'
    key_file.parent.mkdir()
    key_file.write_text(json.dumps({
        'type': 'service_account', 'project_id': 'reweigh-test', 'client_email': 'ci@reweigh-test.iam.example',
        'private_key_id': 'k1', 'private_key': f'-----BEGIN PRIVATE KEY-----\n{secrets["sa_private_key"]}\n'
        '-----END PRIVATE KEY-----\n', 'token_uri': 'http://127.0.0.1:9/token'}))
    monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', str(key_file))

    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    overrides = _overrides(data_root, run_dir, run_name='secret', autoresume='true', max_duration='4ba',
                           eval_interval='4ba', save_interval='2ba', save_folder='s3://reweigh/runs/{run_name}/checkpoints',
                           loggers=f'{{file: {{filename: {run_dir / "log.txt"}}}}}')
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    assert main(['analyze', str(run_dir)]) == 0
    assert main(['analyze', 's3://reweigh/runs/secret', '--out', str(tmp_path / 'remote-report')]) == 0
    out, err = capsys.readouterr()

    written = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file() and p != key_file}
    client = boto3.client('s3', endpoint_url=s3_env)
    uploaded = {o['Key']: client.get_object(Bucket='reweigh', Key=o['Key'])['Body'].read()
                for o in client.list_objects_v2(Bucket='reweigh', Prefix='runs/secret/')['Contents']}
    assert any(k.endswith('.pt') for k in uploaded) and any(k.endswith('.parquet') for k in uploaded)
    assert {p.name for p in written} >= {'log.txt', 'summary.json', 'report.md'}
    assert any(p.suffix == '.parquet' and 'history' in p.parts for p in written)
    for secret in secrets.values():
        assert secret not in out and secret not in err
        leaks = [str(p) for p, data in written.items() if secret.encode() in data]
        leaks += [k for k, data in uploaded.items() if secret.encode() in data]
        assert not leaks, f'{secret} found in {leaks}'
