"""`reweigh sweep`: a grid of arms x seeds from one config; finished runs are skipped, then compared."""

import shlex
from pathlib import Path

import pytest

from reweigh.analysis.runs import SUMMARY_FILE, load_run
from reweigh.cli.main import main

TINY_CPU = str(Path(__file__).resolve().parents[1] / 'yamls' / 'tiny-cpu.yaml')


def _overrides(data_root):
    return [
        f'train_loader.dataset.local={data_root}', 'train_loader.dataset.prepare_default=false',
        f'eval_loader.dataset.local={data_root}', 'loggers={}', 'callbacks={}',
        'model.config={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}', 'max_duration=4ba', 'eval_interval=2ba',
        'save_interval=2ba', 'algorithms.loss_reweighting.warmup=1ba', 'history.flush_interval=2ba', 'progress_bar=false',
    ]


def test_sweep_trains_the_grid_skips_finished_runs_and_compares(small_dataset, streaming_shm, tmp_path, capsys):
    data_root, _ = small_dataset
    out = tmp_path / 'sweep'
    common = [TINY_CPU, *_overrides(data_root), '--arms', 'uniform,quadratic', '--out', str(out), '--name', 'demo']
    assert main(['sweep', *common, '--seeds', '1']) == 0
    printed = capsys.readouterr().out
    assert 'reweigh sweep: 2 runs (0 finished already)' in printed
    assert 'reweigh compare: 2 runs in 2 arms (uniform, quadratic); baseline uniform' in printed
    runs = {p.name: load_run(p) for p in sorted(out.iterdir()) if p.name != 'compare'}
    assert sorted(runs) == ['demo-quadratic-s17', 'demo-uniform-s17']
    assert runs['demo-uniform-s17'].config['algorithms']['loss_reweighting'] is None
    assert runs['demo-quadratic-s17'].config['algorithms']['loss_reweighting']['strategy'] == 'quadratic'
    assert all(r.eval['step'].to_pylist()[-1] == 4 for r in runs.values())
    assert '| quadratic | (mean) | 1 |' in (out / 'compare' / 'report.md').read_text()

    # A second seed: only the two new runs are left to do; the commands are printed, one per run, to spread them.
    assert main(['sweep', *common, '--seeds', '17,18', '--print-commands']) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [c[:3] for c in commands] == [['reweigh', 'train', TINY_CPU]] * 2
    assert [next(a for a in c if a.startswith('run_name=')) for c in commands] == \
        ['run_name=demo-uniform-s18', 'run_name=demo-quadratic-s18']
    assert all('seed=18' in c and 'autoresume=true' in c for c in commands)

    # A run whose summary is gone (killed after training) is run again: it resumes and finds nothing to do.
    (out / 'demo-uniform-s17' / SUMMARY_FILE).unlink()
    assert main(['sweep', *common, '--seeds', '1', '--no-compare']) == 0
    assert 'reweigh sweep: 2 runs (1 finished already)' in capsys.readouterr().out
    assert 'already trained for 4ba; nothing to do' in (out / 'demo-uniform-s17' / 'train.log').read_text()

    # The sweep folder moved: run again at its new place, nothing is trained again, and the comparison reads the runs
    # where they are now.
    moved = tmp_path / 'elsewhere' / 'sweep'
    moved.parent.mkdir()
    out.rename(moved)
    common[common.index('--out') + 1] = str(moved)
    assert main(['sweep', *common, '--seeds', '1']) == 0
    printed = capsys.readouterr().out
    assert 'reweigh sweep: 2 runs (2 finished already)' in printed
    assert 'reweigh compare: 2 runs in 2 arms (uniform, quadratic); baseline uniform' in printed


@pytest.mark.parametrize('extra, message', [
    (['--arms', 'uniform,bogus'], "--arms: 'bogus' is neither \"uniform\" nor a strategy"),
    (['--seeds', '0'], "--seeds: '0' is neither a count >= 1"),
    (['--seeds', '1,1'], "--seeds: '1,1' repeats a seed."),
    (['--arm', '../x', 'seed=1'], '--arm: the arm name'),
    (['--arms', '', '--arm', 'r0', 'algorithms.loss_reweighting.r=0'],
     "run demo-r0-s17: config key 'algorithms.loss_reweighting.r'"),
])
def test_sweep_errors_are_one_line_exit_2_before_anything_runs(small_dataset, tmp_path, capsys, extra, message):
    data_root, _ = small_dataset
    out = tmp_path / 'sweep'
    assert main(['sweep', TINY_CPU, *_overrides(data_root), '--out', str(out), '--name', 'demo', *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith('reweigh sweep: error: ') and message in err and err.count('\n') == 1
    assert not out.exists()
