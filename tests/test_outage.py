"""Object storage that goes away in the middle of `reweigh train` (a remote save_folder on loopback S3).

The emulator runs in this process and is stopped and started again on the same port (its buckets live
in the process, so they survive); training runs in a subprocess, as on a cluster node.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from s3_emulator import emulator_env, free_port
from test_train_cli import TINY_CPU, _overrides

from reweigh.analysis.runs import parse_metrics

STEPS, EVERY = 24, 4


class _Emulator:
    """moto's S3 server on a fixed loopback port that can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port, self.server = port, None
        self.url = f'http://127.0.0.1:{port}'

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger('werkzeug').setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address='127.0.0.1', port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def emulator(s3_endpoint):
    """A second server over the same in-process buckets as the session's (bucket ``reweigh``)."""

    emu = _Emulator(free_port())
    emu.start()
    yield emu
    emu.stop()


def _keys(client, prefix: str) -> list[str]:
    return sorted(o['Key'] for o in client.list_objects_v2(Bucket='reweigh', Prefix=prefix).get('Contents', []))


def _train(data_root: Path, run_dir: Path, run_name: str, url: str, **extra: str) -> subprocess.Popen:
    settings = {'max_duration': f'{STEPS}ba', 'eval_interval': f'{STEPS}ba', 'save_interval': f'{EVERY}ba',
                'history.flush_interval': f'{EVERY}ba', 'save_num_checkpoints_to_keep': '-1',
                'model.config': '{n_layer: 2, n_embd: 64, n_head: 2, n_positions: 64}', **extra}
    overrides = _overrides(data_root, run_dir, run_name=run_name, autoresume='true',
                           save_folder='s3://reweigh/runs/{run_name}/checkpoints', **settings)
    env = {**os.environ, **emulator_env(url), 'PYTHONUNBUFFERED': '1'}
    return subprocess.Popen([sys.executable, '-m', 'reweigh.cli.train', str(TINY_CPU), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


def _uploaded_steps(client, prefix: str, tmp: Path) -> tuple[list[int], int]:
    steps: list[int] = []
    for key in _keys(client, f'{prefix}/history/'):
        local = tmp / key.replace('/', '_')
        client.download_file('reweigh', key, str(local))
        steps += pq.read_table(local)['step'].to_pylist()
    return sorted(set(steps)), len(steps)


def test_store_down_for_several_checkpoint_intervals_mid_run(small_dataset, streaming_shm, emulator, tmp_path):
    """The run goes on while the store is down, warns, and uploads every checkpoint and part once it is back."""
    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=emulator.url, aws_access_key_id='testing',
                          aws_secret_access_key='testing', region_name='us-east-1')
    run_dir, prefix = tmp_path / 'run', 'runs/outage-mid'
    proc = _train(data_root, run_dir, 'outage-mid', emulator.url)
    _wait_for(lambda: f'{prefix}/checkpoints/latest-rank0.pt.symlink' in _keys(client, prefix), 240, 'a first checkpoint')
    emulator.stop()
    local = run_dir / 'checkpoints'
    saved_before = len(list(local.glob('ep*.pt')))
    _wait_for(lambda: len(list(local.glob('ep*.pt'))) >= saved_before + 2 or proc.poll() is not None, 120,
              'two checkpoint intervals of training during the outage')
    assert len(list(local.glob('ep*.pt'))) >= saved_before + 2, 'training did not go on while the store was down'
    time.sleep(2)
    emulator.start()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert 'reweigh: warning: checkpoints: cannot upload to s3://reweigh/runs/outage-mid/checkpoints' in err
    assert 'is reachable again after' in err and 'Traceback' not in err

    keys = _keys(client, prefix)
    assert [k for k in keys if k.endswith('.pt')] == sorted(
        f'{prefix}/checkpoints/ep0-ba{b}-rank0.pt' for b in range(EVERY, STEPS + 1, EVERY))
    pointer = client.get_object(Bucket='reweigh', Key=f'{prefix}/checkpoints/latest-rank0.pt.symlink')['Body'].read()
    assert pointer.decode() == f'{prefix}/checkpoints/ep0-ba{STEPS}-rank0.pt'
    assert [k.rsplit('/', 1)[1] for k in keys if '/history/' in k] == [
        f'part-{b:09d}-{b + EVERY - 1:09d}.parquet' for b in range(0, STEPS, EVERY)]
    steps, rows = _uploaded_steps(client, prefix, tmp_path)
    assert steps == list(range(STEPS)) and rows == STEPS * 8  # every step once, 8 samples each


def test_outage_past_the_limit_stops_clearly_and_a_fresh_node_resumes(small_dataset, streaming_shm, emulator,
                                                                       tmp_path):
    """Past `object_store_outage_s` the run stops with one clear error; the same command on a machine
    without the local files resumes from the bucket, and the uploaded history has every step once."""
    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=emulator.url, aws_access_key_id='testing',
                          aws_secret_access_key='testing', region_name='us-east-1')
    run_dir, prefix = tmp_path / 'run', 'runs/outage-long'
    proc = _train(data_root, run_dir, 'outage-long', emulator.url, object_store_outage_s='3',
                  max_duration=f'{STEPS * 4}ba', eval_interval=f'{STEPS * 4}ba')
    _wait_for(lambda: f'{prefix}/checkpoints/latest-rank0.pt.symlink' in _keys(client, prefix), 240, 'a first checkpoint')
    emulator.stop()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and 'stayed unreachable' in errors[0] and 'limit 3 s' in errors[0], err
    assert 'Traceback' not in err
    emulator.start()
    in_bucket = client.get_object(Bucket='reweigh', Key=f'{prefix}/checkpoints/latest-rank0.pt.symlink')['Body'].read()

    shutil.rmtree(run_dir)  # a fresh node: only the bucket is left
    proc = _train(data_root, run_dir, 'outage-long', emulator.url, object_store_outage_s='3',
                  max_duration=f'{STEPS * 4}ba', eval_interval=f'{STEPS * 4}ba')
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f'resuming from s3://reweigh/{prefix}/checkpoints/{in_bucket.decode().rsplit("/", 1)[1]}' in err
    steps, rows = _uploaded_steps(client, prefix, tmp_path)
    assert steps == list(range(STEPS * 4)) and rows == STEPS * 4 * 8  # no step missing, none twice
    metrics = client.get_object(Bucket='reweigh', Key=f'{prefix}/metrics.jsonl')['Body'].read().decode()
    assert [r['step'] for r in parse_metrics(metrics) if r['kind'] == 'train'] == list(range(1, STEPS * 4 + 1))


def test_sigterm_with_a_bucket_save_folder_uploads_the_stop_and_a_fresh_node_resumes_there(small_dataset, streaming_shm,
                                                                                              emulator, tmp_path):
    """Preempted with save_folder in a bucket: before exiting 75 the run has put the checkpoint of the step it stopped
    at, its pointer, the history up to that step and the metrics in the bucket; a machine with none of the local files
    resumes there, and no step is trained twice."""
    import re
    import signal

    from reweigh.history.format import list_parts

    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=emulator.url, aws_access_key_id='testing',
                          aws_secret_access_key='testing', region_name='us-east-1')
    run_dir, prefix, steps = tmp_path / 'run', 'runs/preempted', 120
    settings = dict(max_duration=f'{steps}ba', eval_interval=f'{steps}ba', save_interval=f'{steps}ba',
                    console_log_interval='1ba')
    (tmp_path / 'first').mkdir()
    (tmp_path / 'second').mkdir()
    proc = _train(data_root, run_dir, 'preempted', emulator.url, **settings)
    _wait_for(lambda: max((p.last for p in list_parts(run_dir / 'history' / 'rank0')), default=-1) >= EVERY - 1
              or proc.poll() is not None, 240, 'a first history part')
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    stopped = int(re.search(r'stopped by SIGTERM after step (\d+)', err).group(1))
    assert stopped < steps
    pointer = client.get_object(Bucket='reweigh', Key=f'{prefix}/checkpoints/latest-rank0.pt.symlink')['Body'].read()
    assert pointer.decode() == f'{prefix}/checkpoints/ep0-ba{stopped}-rank0.pt'
    assert _uploaded_steps(client, prefix, tmp_path / 'first') == (list(range(stopped)), stopped * 8)
    metrics = client.get_object(Bucket='reweigh', Key=f'{prefix}/metrics.jsonl')['Body'].read().decode()
    assert [r['step'] for r in parse_metrics(metrics) if r['kind'] == 'train'] == list(range(1, stopped + 1))

    shutil.rmtree(run_dir)  # the job is rescheduled on another machine: only the bucket is left
    proc = _train(data_root, run_dir, 'preempted', emulator.url, **settings)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f'resuming from s3://reweigh/{prefix}/checkpoints/ep0-ba{stopped}-rank0.pt' in err
    assert [int(b) for b in re.findall(rf'\[batch=(\d+)/{steps}\]', err)] == list(range(stopped + 1, steps + 1))
    assert _uploaded_steps(client, prefix, tmp_path / 'second') == (list(range(steps)), steps * 8)


def test_resume_from_the_bucket_drops_history_uploaded_past_the_checkpoint(small_dataset, streaming_shm, s3_env,
                                                                           tmp_path):
    """An attempt whose history parts reached the bucket but whose last checkpoint did not: the resumed
    run removes those rows from the uploaded parts, so no step is counted twice."""
    from reweigh.cli.main import main

    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=s3_env)
    prefix, run_dir = 'runs/ahead', tmp_path / 'run'
    overrides = _overrides(data_root, run_dir, run_name='ahead', autoresume='true', max_duration='8ba',
                           eval_interval='8ba', save_interval='4ba', save_folder='s3://reweigh/runs/{run_name}/checkpoints',
                           **{'history.flush_interval': '2ba'})
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    # As if the upload of ep0-ba8 had never happened: the pointer names ba4, the parts cover steps 0-7.
    client.put_object(Bucket='reweigh', Key=f'{prefix}/checkpoints/latest-rank0.pt.symlink',
                      Body=f'{prefix}/checkpoints/ep0-ba4-rank0.pt'.encode())
    shutil.rmtree(run_dir)
    assert main(['train', str(TINY_CPU), *overrides, 'history.flush_interval=4ba']) == 0  # other part boundaries
    parts = [k.rsplit('/', 1)[1] for k in _keys(client, f'{prefix}/history/')]
    assert 'part-000000004-000000005.parquet' in parts and 'part-000000004-000000007.parquet' in parts
    steps, rows = _uploaded_steps(client, prefix, tmp_path)
    assert steps == list(range(8)) and rows == 8 * 8
    # The metrics came back from the bucket too: every step and the evaluation once, in the bucket and here.
    for text in (client.get_object(Bucket='reweigh', Key=f'{prefix}/metrics.jsonl')['Body'].read().decode(),
                 (run_dir / 'metrics.jsonl').read_text()):
        raw = parse_metrics(text)
        assert [r['step'] for r in raw if r['kind'] == 'train'] == list(range(1, 9))
        assert sorted(r['step'] for r in raw if r['kind'] == 'eval') == [8, 8, 8]  # one line per domain


def test_every_node_resumes_from_rank_0s_checkpoint_even_one_the_bucket_lacked(s3_env, tmp_path):
    """On several nodes rank 0 first puts its latest checkpoint in the bucket (an attempt stopped before the mirror
    uploaded it), then each other node replaces what its own folder names with that one."""
    from reweigh.callbacks.mirror import publish_latest, restore_latest_from_remote

    client = boto3.client('s3', endpoint_url=s3_env)
    remote, prefix = 's3://reweigh/runs/nodes/checkpoints', 'runs/nodes/checkpoints'
    node0, node1 = tmp_path / 'node0', tmp_path / 'node1'
    for folder in (node0, node1):
        folder.mkdir()
        (folder / 'ep0-ba4-rank0.pt').write_bytes(b'step 4')
        (folder / 'latest-rank0.pt').symlink_to('ep0-ba4-rank0.pt')
    client.put_object(Bucket='reweigh', Key=f'{prefix}/ep0-ba4-rank0.pt', Body=b'step 4')
    client.put_object(Bucket='reweigh', Key=f'{prefix}/latest-rank0.pt.symlink', Body=f'{prefix}/ep0-ba4-rank0.pt'.encode())
    (node0 / 'ep0-ba8-rank0.pt').write_bytes(b'step 8')  # saved by rank 0; its upload had not happened
    (node0 / 'latest-rank0.pt').unlink()
    (node0 / 'latest-rank0.pt').symlink_to('ep0-ba8-rank0.pt')

    assert publish_latest(node0, remote) == 'ep0-ba8-rank0.pt'
    assert client.get_object(Bucket='reweigh', Key=f'{prefix}/ep0-ba8-rank0.pt')['Body'].read() == b'step 8'
    assert restore_latest_from_remote(node1, remote, rank=0) is None  # a single node keeps its own
    assert restore_latest_from_remote(node1, remote, rank=0, replace=True) == 'ep0-ba8-rank0.pt'
    assert os.readlink(node1 / 'latest-rank0.pt') == 'ep0-ba8-rank0.pt'
    assert (node1 / 'ep0-ba8-rank0.pt').read_bytes() == b'step 8'
    assert restore_latest_from_remote(node1, remote, rank=0, replace=True) is None  # already the same

    client.delete_object(Bucket='reweigh', Key=f'{prefix}/latest-rank0.pt.symlink')  # rank 0 starts afresh
    assert restore_latest_from_remote(node1, remote, rank=0, replace=True) is None
    assert not (node1 / 'latest-rank0.pt').is_symlink()
