"""Two nodes, simulated on one machine: `torchrun --nnodes 2` with one rank per node, each node with its own local run
folder and shared memory (a mount namespace: the same path, another disk, as separate machines have), one S3-emulator
`save_folder`. One node is killed mid-run, both are restarted, and the run ends as an uninterrupted one does.

Needs root and `unshare` (to mount per node); skipped where they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.dataset as pads
import pytest
from s3_emulator import emulator_env, free_port
from test_train_cli import TINY_CPU

from reweigh.analysis.runs import parse_metrics
from reweigh.history.format import list_parts

STEPS, EVERY = 48, 4
NODE = 'mount -t tmpfs tmpfs /dev/shm && mount --bind "$NODE_DIR" "$RUN_DIR" && exec "$@"'
"""What each node runs first: its own shared memory (Streaming's) and its own disk at the run folder's path."""

_DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT')
"""Set in this process by an earlier in-process run (Composer's single-process defaults)."""


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which('unshare') is None:
        return False
    return subprocess.run(['unshare', '--mount', 'true'], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason='simulating nodes needs root and unshare (mount namespaces)')


def _node(rank: int, port: int, tmp: Path, name: str, url: str, data_root: Path, attempt: str) -> subprocess.Popen:
    """Node ``rank`` of run ``name``: torchrun with one rank, its run folder ``tmp/name/run`` on its own disk."""
    run_dir, node_dir = tmp / name / 'run', tmp / name / f'node{rank}'
    run_dir.mkdir(parents=True, exist_ok=True)
    node_dir.mkdir(exist_ok=True)
    overrides = {
        'run_name': name, 'run_dir': str(run_dir), 'history.folder': str(run_dir / 'history'),
        'save_folder': 's3://reweigh/runs/{run_name}/checkpoints', 'autoresume': 'true',
        'train_loader.dataset.local': str(data_root), 'eval_loader.dataset.local': str(data_root),
        'train_loader.dataset.prepare_default': 'false', 'loggers': '{}', 'callbacks': '{}', 'progress_bar': 'false',
        'model.config': '{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}', 'global_train_batch_size': '8',
        'algorithms.loss_reweighting.warmup': '2ba', 'max_duration': f'{STEPS}ba', 'eval_interval': f'{STEPS}ba',
        'save_interval': f'{EVERY}ba', 'history.flush_interval': f'{EVERY}ba', 'console_log_interval': '1ba',
    }
    torchrun = Path(sys.executable).parent / 'torchrun'
    command = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', NODE, 'node', str(torchrun),
               '--nnodes', '2', '--nproc-per-node', '1', '--node-rank', str(rank), '--master-addr', '127.0.0.1',
               '--master-port', str(port), '-m', 'reweigh.cli.train', str(TINY_CPU),
               *(f'{k}={v}' for k, v in overrides.items())]
    inherited = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}  # as a fresh shell on a node has
    env = {**inherited, **emulator_env(url), 'PYTHONUNBUFFERED': '1', 'NODE_DIR': str(node_dir),
           'RUN_DIR': str(run_dir)}
    with open(tmp / name / f'{attempt}.node{rank}.log', 'w') as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _launch(tmp, name, url, data_root, attempt):
    port = free_port()
    return [_node(rank, port, tmp, name, url, data_root, attempt) for rank in (0, 1)]


def _log(tmp, name, attempt, rank):
    return (tmp / name / f'{attempt}.node{rank}.log').read_text()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its ranks in sessions of their own, so not its process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _kill(node: subprocess.Popen) -> None:
    """SIGKILL a node: its agent and its ranks, at once."""
    for pid in _tree(node.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(nodes, timeout=600):
    try:
        return [node.wait(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                _kill(node)


def _bucket_run(client, name, tmp):
    """The run as the bucket holds it: the history of both ranks, the metrics and the summary."""
    local = tmp / f'{name}-from-bucket'
    for item in client.list_objects_v2(Bucket='reweigh', Prefix=f'runs/{name}/history/').get('Contents', []):
        path = local / item['Key'].split('/history/', 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file('reweigh', item['Key'], str(path))
    history = pads.dataset(str(local), format='parquet').to_table().to_pandas()
    history = history.sort_values(['step', 'rank', 'sample_id']).reset_index(drop=True)
    metrics = parse_metrics(client.get_object(Bucket='reweigh', Key=f'runs/{name}/metrics.jsonl')['Body'].read().decode())
    summary = json.loads(client.get_object(Bucket='reweigh', Key=f'runs/{name}/summary.json')['Body'].read())
    return history, metrics, summary


def test_killing_one_of_two_nodes_then_restarting_both_ends_as_an_uninterrupted_run(small_dataset, s3_endpoint,
                                                                                    tmp_path):
    data_root, _ = small_dataset
    client = boto3.client('s3', endpoint_url=s3_endpoint, aws_access_key_id='testing', aws_secret_access_key='testing',
                          region_name='us-east-1')

    straight = _launch(tmp_path, 'straight', s3_endpoint, data_root, 'only')
    assert _wait(straight) == [0, 0], _log(tmp_path, 'straight', 'only', 0)[-3000:]

    first = _launch(tmp_path, 'killed', s3_endpoint, data_root, 'first')
    try:
        deadline = time.monotonic() + 600
        node1_history = tmp_path / 'killed' / 'node1' / 'history' / 'rank1'
        while max((p.last for p in list_parts(node1_history)), default=-1) < 2 * EVERY - 1:  # 8 steps done
            assert all(n.poll() is None for n in first) and time.monotonic() < deadline, \
                _log(tmp_path, 'killed', 'first', 0)[-3000:]
            time.sleep(0.02)
        _kill(first[1])  # node 1 goes away: its agent and its rank
        first[0].wait(timeout=300)  # node 0's rank loses its peer and stops
    finally:
        for node in first:
            if node.poll() is None:
                _kill(node)
    assert first[0].returncode != 0
    trained_first = [int(b) for b in re.findall(rf'\[batch=(\d+)/{STEPS}\]', _log(tmp_path, 'killed', 'first', 0))]
    assert 2 * EVERY <= max(trained_first) < STEPS, 'the run finished before a node was killed: lengthen it'
    # Each node kept its own files: node 1's folder has rank 1's history and no checkpoint of its own.
    assert (tmp_path / 'killed' / 'node1' / 'history' / 'rank1').is_dir()
    assert not (tmp_path / 'killed' / 'node1' / 'history' / 'rank0').exists()
    assert list((tmp_path / 'killed' / 'run').iterdir()) == []  # the mount point: nothing reached the shared path

    second = _launch(tmp_path, 'killed', s3_endpoint, data_root, 'second')
    assert _wait(second) == [0, 0], _log(tmp_path, 'killed', 'second', 0)[-3000:] + _log(tmp_path, 'killed', 'second', 1)[-3000:]
    resumed_from = int(re.search(r'\[batch=(\d+)/', _log(tmp_path, 'killed', 'second', 0)).group(1)) - 1
    assert resumed_from % EVERY == 0 and resumed_from >= EVERY
    # node 1 took that checkpoint from the bucket, where rank 0 had made sure it was
    assert (f'reweigh train: node 1 resumes from s3://reweigh/runs/killed/checkpoints/ep0-ba{resumed_from}-rank0.pt'
            in _log(tmp_path, 'killed', 'second', 1))

    history, metrics, summary = _bucket_run(client, 'killed', tmp_path)
    want_history, want_metrics, want_summary = _bucket_run(client, 'straight', tmp_path)
    assert history.groupby(['step', 'rank']).size().tolist() == [4] * (STEPS * 2)  # every step once, on both ranks
    assert history[['step', 'rank', 'sample_id', 'domain']].equals(want_history[['step', 'rank', 'sample_id', 'domain']])
    assert history.loss.to_numpy() == pytest.approx(want_history.loss.to_numpy(), rel=1e-4, abs=1e-6)
    assert history.weight.to_numpy() == pytest.approx(want_history.weight.to_numpy(), rel=1e-4, abs=1e-6)
    train = [r for r in metrics if r['kind'] == 'train']
    want_train = [r for r in want_metrics if r['kind'] == 'train']
    assert [r['step'] for r in train] == list(range(1, STEPS + 1))  # every step logged once
    for got, want in zip(train, want_train, strict=True):
        assert got.keys() == want.keys()
        assert {k: v for k, v in got.items() if k != 'kind'} == pytest.approx(
            {k: v for k, v in want.items() if k != 'kind'}, rel=1e-4, abs=1e-6)
    assert summary['steps'] == want_summary['steps'] == STEPS
    assert summary['eval'] == pytest.approx(want_summary['eval'], rel=1e-4)
