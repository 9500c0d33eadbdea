"""`reweigh train` end to end on the small default corpus, and kill -9 / autoresume equivalence."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import torch
from s3_emulator import free_port

from reweigh.analysis.runs import METRICS_FILE, load_run, parse_metrics
from reweigh.cli.main import main
from reweigh.history.format import list_parts

TINY_CPU = Path(__file__).resolve().parents[1] / 'yamls' / 'tiny-cpu.yaml'


def _overrides(data_root, run_dir, **extra):
    values = {
        'run_dir': str(run_dir),
        'save_folder': str(run_dir / 'checkpoints'),
        'history.folder': str(run_dir / 'history'),
        'loggers': '{}',
        'callbacks': '{}',
        'train_loader.dataset.local': str(data_root),
        'train_loader.dataset.prepare_default': 'false',
        'eval_loader.dataset.local': str(data_root),
        'model.config': '{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}',
        'global_train_batch_size': '8',
        'algorithms.loss_reweighting.warmup': '2ba',
        'history.flush_interval': '2ba',
        'progress_bar': 'false',
        'max_duration': '6ba',
        'eval_interval': '3ba',
        'save_interval': '3ba',
    }
    values.update(extra)
    return [f'{k}={v}' for k, v in values.items()]


def test_train_then_analyze_end_to_end(small_dataset, streaming_shm, tmp_path, capsys, recwarn, monkeypatch):
    data_root, prepared = small_dataset
    run_dir = tmp_path / 'run'
    assert main(['train', str(TINY_CPU), *_overrides(data_root, run_dir, progress_bar='null')]) == 0
    out, err = capsys.readouterr()
    assert 'reweigh train: finished tiny-cpu after 6 steps' in out
    # progress_bar unset and stderr not a terminal: console log lines instead of a redrawn bar.
    assert '[batch=6/6]' in err and 'ba/s' not in err
    # The validation splits end in partial batches; that is expected and must not warn once per batch.
    assert not [w for w in recwarn if 'Cannot split tensor' in str(w.message)]

    summary = json.loads((run_dir / 'summary.json').read_text())
    domains = prepared.manifest.domain_names
    assert summary['steps'] == 6 and summary['dataset'] == str(data_root)
    for d in domains:
        assert summary['eval'][f'val/{d}/LanguageCrossEntropy'] > 0
    assert {p.name for p in (run_dir / 'checkpoints').iterdir()} >= {'ep0-ba3-rank0.pt', 'ep0-ba6-rank0.pt'}

    table = pads.dataset(str(run_dir / 'history'), format='parquet').to_table().to_pandas()
    assert len(table) == 6 * 8
    assert sorted(table.step.unique()) == list(range(6))
    assert table.groupby('step').active.first().tolist() == [False, False, True, True, True, True]
    assert table.groupby('step').weight.sum().to_numpy() == pytest.approx([1.0] * 6, abs=1e-6)
    assert set(table.domain) <= set(range(len(domains)))

    run = load_run(run_dir)  # the metrics over time, and the config that made them
    assert sorted(set(run.eval['step'].to_pylist())) == [3, 6] and set(run.eval['domain'].to_pylist()) == set(domains)
    assert run.train['step'].to_pylist() == [1, 2, 3, 4, 5, 6] and run.config['max_duration'] == '6ba'

    assert main(['analyze', str(run_dir)]) == 0
    report = (run_dir / 'analysis' / 'report.md').read_text()
    assert 'Most deprioritised domain:' in report and all(d in report for d in domains)

    # The run folder refers to what lies inside it relative to itself, to the dataset outside it absolutely ...
    assert {k: summary[k] for k in ('run_dir', 'history', 'save_folder')} == {
        'run_dir': '.', 'history': 'history', 'save_folder': 'checkpoints'}
    # ... so a copy analysed from another directory reads its own history and gives the same report
    copy = tmp_path / 'moved' / 'copy'
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns('analysis'))
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    capsys.readouterr()
    assert main(['analyze', str(copy)]) == 0
    assert (copy / 'analysis' / 'report.md').read_text() == report
    victim = sorted((copy / 'history' / 'rank0').glob('part-*.parquet'))[-1]  # steps 4-5 of 6
    victim.write_bytes(victim.read_bytes()[:100])
    assert main(['analyze', str(copy)]) == 0
    out, err = capsys.readouterr()
    assert 'reweigh analyze: 32 rows over 4 steps' in out  # the copy's history, not the original's 48 rows
    assert err.count('\n') == 1 and f'{victim} (steps 4-5, about 16 rows)' in err


def test_config_errors_exit_2_and_name_the_key(small_dataset, tmp_path, capsys):
    data_root, _ = small_dataset
    code = main(['train', str(TINY_CPU), *_overrides(data_root, tmp_path, device_train_microbatch_size='64')])
    assert code == 2
    assert "config key 'device_train_microbatch_size': 64 is larger than global_train_batch_size" in capsys.readouterr().err


def test_missing_dataset_without_prepare_default_is_a_clear_error(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code = main(['train', str(TINY_CPU), *_overrides(tmp_path / 'empty', tmp_path / 'run')])
    assert code == 2
    assert 'no prepared dataset' in capsys.readouterr().err


def _train_process(overrides, env):
    return subprocess.Popen(
        [sys.executable, '-m', 'reweigh.cli.train', str(TINY_CPU), *overrides],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _final_state(run_dir):
    ckpt = torch.load(run_dir / 'checkpoints' / 'latest-rank0.pt', map_location='cpu', weights_only=False)
    model = ckpt['state']['model']
    history = pads.dataset(str(run_dir / 'history'), format='parquet').to_table()
    return model, history.sort_by([('step', 'ascending'), ('sample_id', 'ascending')]).to_pandas()


RESUME = dict(max_duration='30ba', save_interval='5ba', eval_interval='3ba', console_log_interval='1ba')
"""The runs that are interrupted and resumed, and the straight run they must equal."""


def trained(data_root, run_dir, run_name, **settings):
    """``run_dir`` after ``reweigh train`` (a process of its own) ran to the end with ``settings``."""
    process = _train_process(_overrides(data_root, run_dir, run_name=run_name, **settings), dict(os.environ))
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]
    return run_dir


@pytest.fixture(scope='module')
def straight_run(small_dataset, tmp_path_factory):
    return trained(small_dataset[0], tmp_path_factory.mktemp('straight') / 'straight', 'straight', **RESUME)


def _assert_equals_straight(run_dir, straight_dir):
    """The final model, the history and metrics.jsonl of ``run_dir`` are those of the uninterrupted run."""
    straight_model, straight_history = _final_state(straight_dir)
    model, history = _final_state(run_dir)
    assert straight_model.keys() == model.keys()
    for k in model:
        torch.testing.assert_close(model[k], straight_model[k])
    assert len(history) == 30 * 8
    assert history.step.tolist() == straight_history.step.tolist()
    assert history.sample_id.tolist() == straight_history.sample_id.tolist()
    for column in ('loss', 'weight'):
        assert history[column].to_numpy() == pytest.approx(straight_history[column].to_numpy(), rel=1e-5, abs=1e-7)

    # metrics.jsonl: every step and every evaluation once (those past the checkpoint were dropped and redone)
    raw = parse_metrics((run_dir / METRICS_FILE).read_text())
    assert [r['step'] for r in raw if r['kind'] == 'train'] == list(range(1, 31))
    evals = [(r['step'], r['domain']) for r in raw if r['kind'] == 'eval']
    assert sorted(evals) == sorted({(s, d) for s in range(3, 31, 3) for d in ('code', 'docs', 'boilerplate')})
    straight_run, run = load_run(straight_dir), load_run(run_dir)
    assert run.eval['loss'].to_pylist() == pytest.approx(straight_run.eval['loss'].to_pylist(), rel=1e-5)
    assert run.train['loss'].to_pylist() == pytest.approx(straight_run.train['loss'].to_pylist(), rel=1e-5)


def _wait_for(path, process):
    deadline = time.monotonic() + 600
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def killed_and_resumed(data_root, run_dir, run_name, kill_at, **settings):
    """``run_dir`` after ``reweigh train`` was SIGKILLed once checkpoint ``kill_at`` (e.g. ``ep0-ba5-rank0.pt``)
    appeared and the very same command then ran to the end."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    command = _overrides(data_root, run_dir, run_name=run_name, **settings)
    victim = _train_process(command, env)
    _wait_for(run_dir / 'checkpoints' / kill_at, victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, 'the run finished before it could be killed'
    assert (run_dir / 'lease.json').exists()  # left by the killed launch: the next takes it over

    resumed = _train_process(command, env)  # the very same command
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    return run_dir


def test_sigkill_then_same_command_resumes_to_the_uninterrupted_result(small_dataset, straight_run, tmp_path):
    run_dir = killed_and_resumed(small_dataset[0], tmp_path / 'killed', 'killed', 'ep0-ba5-rank0.pt', **RESUME)
    _assert_equals_straight(run_dir, straight_run)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_resumed_run_loses_no_step(
        small_dataset, straight_run, tmp_path):
    data_root, _ = small_dataset
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    run_dir = tmp_path / 'preempted'
    command = _overrides(data_root, run_dir, run_name='preempted', **RESUME)
    first = _train_process(command, env)
    lines, reader = [], threading.Thread(target=lambda: lines.extend(iter(first.stderr.readline, b'')), daemon=True)
    reader.start()
    # into the next save interval (step 7 logged, the last checkpoint at 5), so that steps since it are at stake
    deadline = time.monotonic() + 600
    while not any(b'[batch=7/30]' in line for line in list(lines)) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 75, 'the run finished before it was preempted'
    reader.join(timeout=60)
    first_log = b''.join(lines).decode()
    stopped = int(re.search(r'reweigh train: stopped by SIGTERM after step (\d+), with a checkpoint there; run the same '
                            r'command to resume \(exit 75\)', first_log)[1])
    assert 7 <= stopped < 30 and (run_dir / 'checkpoints' / f'ep0-ba{stopped}-rank0.pt').exists()
    assert not (run_dir / 'lease.json').exists()

    resumed = _train_process(command, env)
    assert resumed.wait(timeout=600) == 0
    # each step trained once over the two launches: the first up to the signal's step, the second after it
    steps = [[int(b) for b in re.findall(r'\[batch=(\d+)/30\]', log)] for log in (first_log, resumed.stderr.read().decode())]
    assert steps == [list(range(1, stopped + 1)), list(range(stopped + 1, 31))]
    _assert_equals_straight(run_dir, straight_run)


def test_a_second_launch_of_a_running_run_is_refused_and_changes_nothing(small_dataset, tmp_path, capsys):
    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    command = _overrides(data_root, run_dir, max_duration='24ba', save_interval='4ba', eval_interval='12ba')
    first = _train_process(command, {**os.environ, 'PYTHONUNBUFFERED': '1'})
    deadline = time.monotonic() + 600
    while not (run_dir / 'checkpoints' / 'ep0-ba4-rank0.pt').exists() and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder = json.loads((run_dir / 'lease.json').read_text())
    config = (run_dir / 'config.yaml').stat()
    assert main(['train', str(TINY_CPU), *command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'reweigh train: error: run folder {run_dir} is being trained by another '
                                               f'launch (host {holder["host"]}, pid {first.pid}, since {holder["since"]}')
    assert (run_dir / 'config.yaml').stat().st_mtime_ns == config.st_mtime_ns
    assert first.poll() is None, 'the first launch ended before the second was tried: lengthen it'
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-3000:]
    _, history = _final_state(run_dir)
    assert history.groupby('step').size().tolist() == [8] * 24  # every step once, by the one writer
    assert not (run_dir / 'lease.json').exists()


def test_a_launch_on_another_machine_is_refused_by_the_bucket_run_folders_lease(small_dataset, s3_env, tmp_path,
                                                                                capsys):
    """Two machines, each with its own local run folder, one remote save_folder: the second is refused by the lease in
    the bucket before it writes anything, here or there."""
    from reweigh.train.lease import RunLease

    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    command = _overrides(data_root, run_dir, run_name='elsewhere', save_folder='s3://reweigh/runs/{run_name}/checkpoints')
    with RunLease('s3://reweigh/runs/elsewhere') as other_machine:
        assert main(['train', str(TINY_CPU), *command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        'reweigh train: error: run folder s3://reweigh/runs/elsewhere is being trained by another launch '
        f'(host {other_machine.holder["host"]}, pid {os.getpid()}, since {other_machine.holder["since"]}')
    assert sorted(p.name for p in run_dir.iterdir()) == []  # its local lease was given back; nothing written


def test_interrupted_checkpoint_save_is_set_aside_and_the_run_resumes(small_dataset, streaming_shm, tmp_path, capsys):
    """Killed while writing a checkpoint: the file exists (truncated) but `latest` still names the one before."""
    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    command = ['train', str(TINY_CPU), *_overrides(data_root, run_dir, max_duration='10ba', save_interval='5ba',
                                                   eval_interval='10ba', autoresume='true')]
    assert main(command) == 0
    finished_model, finished_history = _final_state(run_dir)

    checkpoints = run_dir / 'checkpoints'
    (checkpoints / 'latest-rank0.pt').unlink()
    (checkpoints / 'latest-rank0.pt').symlink_to('ep0-ba5-rank0.pt')
    last = checkpoints / 'ep0-ba10-rank0.pt'
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()

    assert main(command) == 0
    assert 'ep0-ba10-rank0.pt is from an interrupted save' in capsys.readouterr().err
    assert (checkpoints / 'ep0-ba10-rank0.pt.interrupted').stat().st_size == 1000
    model, history = _final_state(run_dir)
    for k in model:
        torch.testing.assert_close(model[k], finished_model[k])
    assert history.step.tolist() == finished_history.step.tolist()  # steps 5-9 once, not twice
    assert history.weight.to_numpy() == pytest.approx(finished_history.weight.to_numpy(), rel=1e-5, abs=1e-7)


def _history(run_dir):
    table = pads.dataset(str(run_dir / 'history'), format='parquet').to_table()
    return table.sort_by([('step', 'ascending'), ('sample_id', 'ascending')]).to_pandas()


def one_and_two_ranks(data_root, tmp_path, common):
    """Train ``common``'s run on one rank (``tmp_path/one``), then through ``composer -n 2`` (gloo, ``tmp_path/two``)."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    one = _train_process(_overrides(data_root, tmp_path / 'one', run_name='one', **common), env)
    assert one.wait(timeout=600) == 0, one.stderr.read().decode()[-3000:]
    launcher = Path(sys.executable).parent / 'composer'
    two = subprocess.Popen(
        [str(launcher), '-n', '2', '--master_port', str(free_port()), '--stdout', str(tmp_path / 'rank{rank}.out'),
         '--stderr', str(tmp_path / 'rank{rank}.err'), '-m', 'reweigh.cli.train', str(TINY_CPU),
         *_overrides(data_root, tmp_path / 'two', run_name='two', **common)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output = two.communicate(timeout=600)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(two.pid, signal.SIGKILL)  # the launcher and both ranks
        raise
    logs = ''.join(p.read_text()[-2000:] for p in tmp_path.glob('rank*.err'))
    assert two.returncode == 0, output[-2000:] + logs


NO_DROPOUT = '{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0}'


def test_two_cpu_ranks_through_composer_launcher_match_one_rank(small_dataset, tmp_path):
    """`composer -n 2 -m reweigh.cli.train ...` (gloo): same samples per step and same weights as one rank."""
    data_root, _ = small_dataset
    one_and_two_ranks(data_root, tmp_path, {'model.config': NO_DROPOUT, 'max_duration': '6ba', 'eval_interval': '6ba',
                                            'save_interval': '6ba'})

    assert sorted(p.name for p in (tmp_path / 'two' / 'history').iterdir()) == ['rank0', 'rank1']
    single, double = _history(tmp_path / 'one'), _history(tmp_path / 'two')
    assert len(double) == len(single) == 6 * 8
    assert set(double['rank']) == {0, 1} and (double.groupby('step')['rank'].nunique() == 2).all()
    assert double.step.tolist() == single.step.tolist()
    assert double.sample_id.tolist() == single.sample_id.tolist()
    assert double.weight.to_numpy() == pytest.approx(single.weight.to_numpy(), rel=1e-4, abs=1e-6)
    assert double.groupby('step').weight.sum().to_numpy() == pytest.approx([1.0] * 6, abs=1e-6)




def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the training process of ``rank`` among the launcher's children (from /proc), if it started."""
    children = Path(f'/proc/{launcher_pid}/task/{launcher_pid}/children').read_text().split()
    for pid in map(int, children):
        try:
            if f'RANK={rank}'.encode() in Path(f'/proc/{pid}/environ').read_bytes().split(b'\0'):
                return pid
        except OSError:
            continue
    return None


def test_sigterm_to_one_of_two_ranks_stops_both_at_the_same_step_and_they_resume(small_dataset, tmp_path):
    """The ranks agree to stop at the next multiple of preemption.check_every after the signal (one all-reduce every
    that many steps), save there, exit 75, and the relaunch trains each remaining step once."""
    data_root, _ = small_dataset
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    run_dir = tmp_path / 'run'
    command = _overrides(data_root, run_dir, max_duration='40ba', save_interval='40ba', eval_interval='40ba',
                         console_log_interval='1ba', **{'preemption.check_every': '4'})

    def launch(attempt):  # the launcher's output holds rank 0's console log
        launcher = Path(sys.executable).parent / 'composer'
        with open(tmp_path / f'{attempt}.log', 'w') as out:
            return subprocess.Popen(
                [str(launcher), '-n', '2', '--master_port', str(free_port()), '-m', 'reweigh.cli.train', str(TINY_CPU),
                 *command], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log(attempt):
        return (tmp_path / f'{attempt}.log').read_text()

    def steps(attempt):  # the steps rank 0 logged (not the launcher's copy of another rank's output, when it exited)
        own = re.sub(r'-+Begin global rank \d+ \w+-+.*?-+End global rank \d+ \w+-+', '', log(attempt), flags=re.S)
        return [int(b) for b in re.findall(r'\[batch=(\d+)/40\]', own)]

    first = launch('first')
    try:
        deadline = time.monotonic() + 600
        while max((p.last for p in list_parts(run_dir / 'history' / 'rank1')), default=-1) < 4:  # 6 steps done
            assert first.poll() is None and time.monotonic() < deadline, log('first')[-3000:]
            time.sleep(0.05)
        os.kill(_rank_pid(first.pid, 1), signal.SIGTERM)  # rank 1 only: rank 0 learns it from the all-reduce
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stopped = max(steps('first'))
    assert stopped % 4 == 0 and stopped < 40, log('first')[-3000:]
    assert f'stopped by SIGTERM after step {stopped}' in log('first')
    assert (run_dir / 'checkpoints' / f'ep0-ba{stopped}-rank0.pt').exists()
    assert set(_history(run_dir).groupby('rank').step.max()) == {stopped - 1}  # both ranks stopped there

    second = launch('second')
    assert second.wait(timeout=600) == 0, log('second')[-3000:]
    assert steps('first') + steps('second') == list(range(1, 41))  # every step trained once
    history = _history(run_dir)
    assert history.groupby(['step', 'rank']).size().tolist() == [4] * 80


def test_remote_save_folder_gets_checkpoints_and_history_parts(small_dataset, streaming_shm, s3_env, tmp_path, capsys):
    """save_folder in object storage: Composer uploads checkpoints, LossHistory uploads its part files."""
    import boto3

    data_root, _ = small_dataset
    run_dir = tmp_path / 'run'
    overrides = _overrides(
        data_root, run_dir, run_name='remote', save_folder='s3://reweigh/runs/{run_name}/checkpoints',
        autoresume='false', max_duration='4ba', eval_interval='4ba', save_interval='2ba',
    )
    overrides = [o for o in overrides if not o.startswith('model.config=')]
    llama_yaml = tmp_path / 'llama.yaml'  # the demo config with a tiny Llama instead of GPT-2
    llama_yaml.write_text(TINY_CPU.read_text().replace(
        'family: gpt2\n  config: {n_layer: 2, n_embd: 128, n_head: 4, n_positions: 256}',
        'family: llama\n  config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, '
        'num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 64}',
    ))
    assert 'family: llama' in llama_yaml.read_text()
    assert main(['train', str(llama_yaml), *overrides]) == 0
    keys = sorted(o['Key'] for o in boto3.client('s3', endpoint_url=s3_env).list_objects_v2(
        Bucket='reweigh', Prefix='runs/remote/')['Contents'])
    assert 'runs/remote/checkpoints/ep0-ba4-rank0.pt' in keys
    assert {'runs/remote/metrics.jsonl', 'runs/remote/config.yaml', 'runs/remote/summary.json'} <= set(keys)
    assert [k for k in keys if '/history/' in k] == [
        'runs/remote/history/rank0/part-000000000-000000001.parquet',
        'runs/remote/history/rank0/part-000000002-000000003.parquet',
    ]
    capsys.readouterr()
    assert main(['analyze', 's3://reweigh/runs/remote', '--out', str(tmp_path / 'report')]) == 0
    assert '32 rows over 4 steps' in (tmp_path / 'report' / 'report.md').read_text()
    assert main(['compare', 's3://reweigh/runs/remote', '--out', str(tmp_path / 'compare')]) == 0
    assert 'reweigh compare: 1 run in 1 arm (linupper); baseline linupper' in capsys.readouterr().out
