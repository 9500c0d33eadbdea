"""`reweigh compare` and reweigh.analysis.compare on synthetic run folders with a known answer."""

import math
import statistics

import pyarrow.csv as pacsv
import pytest
import yaml

from reweigh.analysis.compare import (
    MEAN_DOMAIN,
    compare_runs,
    group_arms,
    paired_difference,
    steps_to_reach,
    t_quantile,
)
from reweigh.analysis.runs import CONFIG_FILE, METRICS_FILE, load_run, metrics_line
from reweigh.cli.main import main

STEPS = (100, 200, 300, 400, 500)
SEEDS = (17, 18, 19)
SEED_OFFSET = {17: -0.01, 18: 0.0, 19: 0.012}  # the same for both arms: the paired difference is exact
DOCS_NOISE = {17: 0.004, 18: -0.003, 19: -0.002}  # linupper's docs differ from uniform's by noise only


def _config(seed, strategy, run_name, **extra):
    reweighting = None if strategy is None else {'strategy': strategy, 'r': 1.0, 'delta': 1.0, 'warmup': '100ba'}
    config = {'run_name': run_name, 'seed': seed, 'run_dir': f'runs/{run_name}', 'max_duration': '500ba',
              'model': {'family': 'gpt2', 'config': {'n_layer': 2}},
              'algorithms': {'loss_reweighting': reweighting}, 'optimizer': {'lr': 0.002, 'betas': [0.9, 0.95]}}
    config.update(extra)
    return config


def _write_run(folder, config, curves, train_steps=5, steps=STEPS):
    """A run folder as `reweigh train` leaves it: config.yaml and metrics.jsonl (curves: domain -> loss(step))."""
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config))
    lines = [metrics_line('train', s, 2048 * s, {'loss': 6.0 - s / 100, 'loss_reweighting/mean_loss': 6.0 - s / 100,
                                                'loss_reweighting/ess': 0.9, 'loss_reweighting/active': float(s > 1)})
             for s in range(1, train_steps + 1)]
    for step in steps:
        for domain, curve in curves.items():
            loss = curve(step)
            lines.append(metrics_line('eval', step, 2048 * step, {'loss': loss, 'perplexity': math.exp(loss)}, domain=domain))
    (folder / METRICS_FILE).write_text('\n'.join(lines) + '\n')
    return folder


def _study(root):
    """uniform vs linupper over three seeds; linupper reaches uniform's final code loss at step 400 of 500
    (step ratio 0.8) and ends 0.5 lower on code; on docs the two differ by seed noise only."""
    paths = []
    for seed in SEEDS:
        off = SEED_OFFSET[seed]
        paths.append(_write_run(root / f'uniform-s{seed}', _config(seed, None, f'uniform-s{seed}'), {
            'code': lambda s, o=off: 5 - s / 250 + o, 'docs': lambda s, o=off: 4 - s / 500 + o}))
        paths.append(_write_run(root / f'linupper-s{seed}', _config(seed, 'linupper', f'linupper-s{seed}'), {
            'code': lambda s, o=off: 5 - s / 200 + o, 'docs': lambda s, o=off, n=DOCS_NOISE[seed]: 4 - s / 500 + o + n}))
    return paths


def _row(table, arm, domain):
    return next(r for r in table.to_pylist() if r['arm'] == arm and r['domain'] == domain)


def test_compare_finds_the_known_margin_ci_and_steps_to_baseline(tmp_path):
    comparison = compare_runs([load_run(p) for p in _study(tmp_path)], histories=False)
    assert comparison.baseline == 'uniform' and comparison.domains == ['code', 'docs']
    assert comparison.runs['arm'].to_pylist() == ['uniform'] * 3 + ['linupper'] * 3

    code = _row(comparison.final, 'linupper', 'code')
    assert code['loss_mean'] == pytest.approx(2.5 + statistics.fmean(SEED_OFFSET.values()))
    assert code['diff_mean'] == pytest.approx(-0.5)
    assert code['diff_ci_low'] == pytest.approx(-0.5) and code['diff_ci_high'] == pytest.approx(-0.5)
    assert (code['pairs'], code['pairs_better']) == (3, 3)
    assert code["steps_to_baseline"] == pytest.approx(400)
    assert code['step_ratio'] == pytest.approx(0.8)

    docs = _row(comparison.final, 'linupper', 'docs')
    diffs = list(DOCS_NOISE.values())
    half = t_quantile(2) * statistics.stdev(diffs) / math.sqrt(3)
    assert docs['diff_mean'] == pytest.approx(statistics.fmean(diffs))
    assert docs['diff_ci_low'] == pytest.approx(statistics.fmean(diffs) - half)
    assert docs['diff_ci_high'] == pytest.approx(statistics.fmean(diffs) + half)
    assert docs['diff_ci_low'] < 0 < docs['diff_ci_high'] and docs['pairs_better'] == 2

    mean = _row(comparison.final, 'linupper', MEAN_DOMAIN)
    assert mean['diff_mean'] == pytest.approx((-0.5 + statistics.fmean(diffs)) / 2)
    seed_means = [((2.5 + o) + (3.0 + o + DOCS_NOISE[s])) / 2 for s, o in SEED_OFFSET.items()]
    assert mean['perplexity_mean'] == pytest.approx(statistics.fmean(math.exp(m) for m in seed_means))
    base = _row(comparison.final, 'uniform', 'code')
    assert base['diff_mean'] is None and base['step_ratio'] == 1.0
    assert base['loss_std'] == pytest.approx(statistics.stdev(SEED_OFFSET.values()))

    curve = [r for r in comparison.curves.to_pylist() if r['arm'] == 'linupper' and r['domain'] == 'code']
    assert [r['step'] for r in curve] == list(STEPS) and all(r['seeds'] == 3 for r in curve)
    assert curve[-1]['loss_min'] == pytest.approx(2.5 - 0.01) and curve[-1]['loss_max'] == pytest.approx(2.512)
    assert _row(comparison.weights, 'linupper', None)['ess'] == pytest.approx(0.9)
    diff = [r for r in comparison.differences.to_pylist() if r['domain'] == 'code']
    assert [r['step'] for r in diff] == list(STEPS) and {r['arm'] for r in diff} == {'linupper'}
    assert [r['diff_mean'] for r in diff] == pytest.approx([s / 250 - s / 200 for s in STEPS])
    assert all(r['pairs'] == 3 and r['diff_min'] == pytest.approx(r['diff_max']) for r in diff)


def test_compare_cli_writes_report_tables_and_curves(tmp_path, capsys):
    paths = _study(tmp_path / 'runs')
    out = tmp_path / 'cmp'
    assert main(['compare', *map(str, paths), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'reweigh compare: 6 runs in 2 arms (uniform, linupper); baseline uniform' in printed
    assert 'code: 2.5007 Δ -0.5000 (lower (better), beyond seed noise, step ratio 0.80)' in printed
    report = (out / 'report.md').read_text()
    assert '| linupper | code | 3 | 2.5007 ± 0.0110 |' in report
    assert 'within seed noise' in report and '3/3' in report
    for name in ('runs', 'final', 'curves', 'differences', 'weights', 'train'):
        assert (out / f'{name}.parquet').is_file()
    final = pacsv.read_csv(out / 'final.csv')
    assert final.num_rows == 2 * 3  # two arms x (code, docs, mean)
    assert (out / 'curves.png').stat().st_size > 10_000 and (out / 'train_loss.png').is_file()


def test_arms_by_config_name_what_differs(tmp_path):
    runs = []
    for seed in (1, 2):
        for strategy in (None, 'linupper', 'quadratic'):
            name = f'{strategy}-{seed}'
            runs.append(load_run(_write_run(tmp_path / name, _config(seed, strategy, name), {'code': lambda s: 3.0})))
    arms = group_arms(runs)
    assert [(a.name, a.seeds) for a in arms] == [('uniform', [1, 2]), ('linupper', [1, 2]), ('quadratic', [1, 2])]

    r_half = _config(1, 'linupper', 'r-half')
    r_half['algorithms']['loss_reweighting']['r'] = 0.5
    runs.append(load_run(_write_run(tmp_path / 'r-half', r_half, {'code': lambda s: 3.0})))
    assert [a.name for a in group_arms(runs)] == ['uniform', 'linupper,r=1.0', 'quadratic,r=1.0', 'linupper,r=0.5']

    def data(name, seed, local, remote=None):
        return _config(seed, None, name, train_loader={'dataset': {'local': local, 'remote': remote}})

    curves = {'code': lambda s: 3.0}
    on = [load_run(_write_run(tmp_path / n, data(n, *where), curves)) for n, where in (
        ('a', (1, 'data/a')), ('b', (1, 'data/b')), ('c', (1, '/cache/1', 's3://x/d')), ('d', (2, '/cache/2', 's3://x/d')))]
    # two local datasets are two arms; a remote dataset cached in two places is one
    assert [[r.path for r in arm.runs] for arm in group_arms(on, {})] == [[on[0].path], [on[1].path], [on[2].path, on[3].path]]

    lr = _config(1, None, 'lr', optimizer={'lr': 0.001, 'betas': [0.9, 0.95]})
    assert [a.name for a in group_arms([runs[0], load_run(_write_run(tmp_path / 'lr', lr, {'code': lambda s: 3.0}))])] \
        == ['lr=0.002', 'lr=0.001']


def test_named_arms_and_baseline_runs_on_the_command_line(tmp_path, capsys):
    paths = _study(tmp_path / 'runs')
    named = [f'{"base" if "uniform" in p.name else "new"}={p}' for p in paths]
    assert main(['compare', *named, '--out', str(tmp_path / 'a')]) == 0
    assert 'in 2 arms (base, new); baseline base' in capsys.readouterr().out  # no "uniform": the first arm

    linupper = [str(p) for p in paths if 'linupper' in p.name]
    uniform = [str(p) for p in paths if 'uniform' in p.name]
    assert main(['compare', *uniform, '--baseline', *linupper, '--out', str(tmp_path / 'b')]) == 0
    out = capsys.readouterr().out
    assert 'baseline linupper' in out and 'code: 3.0007 Δ +0.5000 (higher (worse), beyond seed noise' in out


@pytest.mark.parametrize('case, message', [
    ('no-metrics', 'has no metrics.jsonl: not a reweigh run folder'),
    ('no-eval', 'has no evaluation metrics (was eval_interval longer than the run?)'),
    ('other-domains', 'runs were evaluated on different domains'),
    ('unfinished', "arm 'linupper': its runs were last evaluated at different steps"),
    ('same-seed', "arm 'linupper' has two runs with seed 17"),
    ('unknown-baseline', "no arm is called 'quadratic'; the arms are: uniform, linupper."),
])
def test_compare_errors_are_one_line_exit_2(tmp_path, capsys, case, message):
    paths = [str(p) for p in _study(tmp_path / 'runs')]
    extra = []
    code_only = {'code': lambda s: 3.0}
    if case == 'no-metrics':
        (tmp_path / 'empty').mkdir()
        paths.append(str(tmp_path / 'empty'))
    elif case == 'no-eval':
        paths.append(str(_write_run(tmp_path / 'x', _config(20, None, 'x'), {}, steps=())))
    elif case == 'other-domains':
        paths.append(str(_write_run(tmp_path / 'x', _config(20, None, 'x'), code_only)))
    elif case == 'unfinished':
        paths.append(str(_write_run(tmp_path / 'x', _config(20, 'linupper', 'x'), {'code': lambda s: 3, 'docs': lambda s: 3},
                                    steps=(100, 200))))
    elif case == 'same-seed':
        paths.append(str(_write_run(tmp_path / 'x', _config(17, 'linupper', 'x'), {'code': lambda s: 3, 'docs': lambda s: 3})))
    else:
        extra = ['--baseline', 'quadratic']
    capsys.readouterr()
    assert main(['compare', *paths, *extra, '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('reweigh compare: error: ') and message in err and err.count('\n') == 1


def test_compare_reads_run_folders_in_a_bucket(tmp_path, s3_env, capsys):
    import boto3

    client = boto3.client('s3', endpoint_url=s3_env)
    uris = []
    for path in _study(tmp_path / 'runs'):
        for file in path.iterdir():
            client.upload_file(str(file), 'reweigh', f'compare/{path.name}/{file.name}')
        uris.append(f's3://reweigh/compare/{path.name}')
    assert main(['compare', *uris, '--out', str(tmp_path / 'out')]) == 0
    assert 'code: 2.5007 Δ -0.5000 (lower (better)' in capsys.readouterr().out


def test_statistics_helpers():
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042
    assert t_quantile(31) == pytest.approx(2.0395, abs=2e-4) and t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    d = paired_difference([1.0], [2.0])
    assert (d.mean, d.ci_low, d.n, d.better) == (-1.0, None, 1, 1)
    assert steps_to_reach([100, 200], [5.0, 4.0], 6.0) == 100.0  # already there at the first evaluation
    assert steps_to_reach([100, 200], [5.0, 4.0], 3.0) is None
    with pytest.raises(ValueError, match='equally many'):
        paired_difference([1.0, 2.0], [1.0])


@pytest.mark.composer  # the dataset is prepared with the pipeline
def test_weight_shares_come_from_the_histories_named_by_the_dataset_without_the_training_stack(tmp_path, small_dataset):
    import json
    import subprocess
    import sys

    from test_analysis import REL, synthetic_history

    root, _ = small_dataset
    paths = _study(tmp_path / 'runs')
    for path in paths:
        if 'linupper' in path.name:
            synthetic_history(path / 'history')
            (path / 'summary.json').write_text(json.dumps({'dataset': str(root)}))
    out = tmp_path / 'out'
    code = (
        'import sys; from reweigh.cli.main import main; '
        f'assert main(["compare", *{[str(p) for p in paths]!r}, "--out", {str(out)!r}]) == 0; '
        'print("heavy:", sorted(m for m in ("torch", "composer", "streaming", "transformers") if m in sys.modules))'
    )
    printed = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert 'heavy: []' in printed, printed
    import pyarrow.parquet as pq

    weights = [r for r in pq.read_table(out / 'weights.parquet').to_pylist() if r['arm'] == 'linupper']
    assert [r['domain'] for r in weights] == ['code', 'docs', 'boilerplate']
    assert [r['mean_rel_weight'] for r in weights] == pytest.approx([REL[d] for d in range(3)])
    assert [r['row_share'] for r in weights] == pytest.approx([1 / 3] * 3)


@pytest.mark.composer  # the dataset is prepared with the pipeline
def test_runs_whose_dataset_moved_say_so_in_one_line_and_take_dataset(tmp_path, small_dataset, capsys):
    import json

    import pyarrow.parquet as pq
    from test_analysis import synthetic_history

    root, _ = small_dataset
    paths = _study(tmp_path / 'runs')
    for path in paths:
        if 'linupper' in path.name:
            synthetic_history(path / 'history')
            (path / 'summary.json').write_text(json.dumps({'dataset': str(tmp_path / 'moved-away')}))

    def domains(out):
        return [r['domain'] for r in pq.read_table(out / 'weights.parquet').to_pylist() if r['arm'] == 'linupper']

    assert main(['compare', *map(str, paths), '--out', str(tmp_path / 'without')]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('reweigh compare: note:')]
    assert len(notes) == 1 and f'cannot read the dataset {tmp_path / "moved-away"}' in notes[0]
    assert '(pass --dataset ROOT)' in notes[0]
    assert main(['compare', *map(str, paths), '--out', str(tmp_path / 'with'), '--dataset', str(root)]) == 0
    assert 'note:' not in capsys.readouterr().err
    assert domains(tmp_path / 'with') == ['code', 'docs', 'boilerplate']
    assert main(['compare', *map(str, paths), '--out', str(tmp_path / 'bad'), '--dataset', str(tmp_path / 'nope')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'reweigh compare: error: --dataset {tmp_path / "nope"}')
