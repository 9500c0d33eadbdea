"""`reweigh analyze` tables and report on a synthetic history whose answers are known."""

import html
import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reweigh.analysis import HISTORY_SCHEMA, analyze_history, load_history, most_deprioritised_domain, write_report
from reweigh.cli.main import main

STEPS, WARMUP, PER_DOMAIN = 40, 10, 4
REL = {0: 0.5, 1: 1.0, 2: 1.5}  # relative weight of each domain after warm-up (sums to 3 = domains)


def synthetic_history(folder, parts=4):
    """12 samples per step (4 per domain); sample ids cycle so every sample is visited 10 times.

    Domain d has loss d + 1 (+ a per-sample offset), and after warm-up weight REL[d] / 12.
    """
    rows = {name: [] for name in HISTORY_SCHEMA.names}
    n = 3 * PER_DOMAIN
    for step in range(STEPS):
        for j in range(n):
            domain = j // PER_DOMAIN
            sample = (step % 4) * n + j  # 48 samples, each seen every 4th step
            rows['step'].append(step)
            rows['microbatch'].append(0)
            rows['rank'].append(j % 2)
            rows['sample_id'].append(sample)
            rows['domain'].append(domain)
            rows['tokens'].append(127)
            rows['mix'].append(-1)
            rows['loss'].append(domain + 1 + 0.01 * (j % PER_DOMAIN) + 0.1 * ((step // 4) % 2))
            active = step >= WARMUP
            rows['weight'].append((REL[domain] if active else 1.0) / n)
            rows['r'].append(1.0)
            rows['active'].append(active)
    table = pa.Table.from_pydict(rows, schema=HISTORY_SCHEMA)
    per = STEPS // parts
    for p in range(parts):
        part = table.filter(pa.compute.and_(
            pa.compute.greater_equal(table['step'], p * per), pa.compute.less(table['step'], (p + 1) * per),
        ))
        rank_dir = folder / 'rank0'
        rank_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, rank_dir / f'part-{p * per:09d}-{(p + 1) * per - 1:09d}.parquet')
    return table


def test_parts_written_before_the_mix_column_are_read_with_the_newer_ones(tmp_path):
    """A run resumed across versions: its first parts lack ``mix``; the history is still read whole."""
    old, new = tmp_path / 'old', tmp_path / 'new'
    synthetic_history(old)
    synthetic_history(new)
    first = sorted((old / 'rank0').iterdir())[-1]
    pq.write_table(pq.read_table(first).drop_columns(['mix']), first)
    expected, analysis = analyze_history(str(new)), analyze_history(str(old))
    assert analysis.rows == expected.rows > 0 and analysis.summary.equals(expected.summary)
    assert load_history(str(old)).num_rows == expected.rows


def test_domain_summary_has_the_known_answers(tmp_path):
    table = synthetic_history(tmp_path)
    analysis = analyze_history(str(tmp_path))  # DuckDB over the part files
    assert analyze_history(load_history(str(tmp_path))).summary.equals(analysis.summary)  # or an in-memory table
    s = analysis.summary.to_pydict()
    assert analysis.rows == table.num_rows == STEPS * 12 and analysis.steps == STEPS
    assert analysis.first_active_step == WARMUP
    assert s['domain'] == [0, 1, 2]
    assert s['rows'] == [STEPS * PER_DOMAIN] * 3
    assert s['samples'] == [16, 16, 16]
    assert s['mean_rel_weight'] == pytest.approx([0.5, 1.0, 1.5])
    assert s['weight_share'] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert s['row_share'] == pytest.approx([1 / 3] * 3)
    assert s['mean_loss'] == pytest.approx([d + 1 + 0.015 + 0.05 for d in range(3)])
    assert most_deprioritised_domain(analysis.summary) == 0


def test_over_time_quantiles_and_samples(tmp_path):
    synthetic_history(tmp_path)
    analysis = analyze_history(str(tmp_path), windows=4, k=3)
    t = analysis.domain_over_time.to_pydict()
    assert sorted(set(t['window'])) == [0, 10, 20, 30]
    # window 0 is the warm-up: uniform; later windows carry the domain's weight
    for w, d, rel in zip(t['window'], t['domain'], t['mean_rel_weight']):
        assert rel == pytest.approx(1.0 if w == 0 else REL[d])
    q = analysis.weight_quantiles.to_pydict()
    assert q['window'] == [10, 20, 30] and q['q05'] == pytest.approx([0.5] * 3) and q['q95'] == pytest.approx([1.5] * 3)
    samples = analysis.samples.to_pydict()
    assert len(samples['sample_id']) == 48 and set(samples['visits']) == {10}
    assert samples['loss_std'][0] == pytest.approx(0.05)  # alternates +0 / +0.1
    low, high = analysis.deprioritised, analysis.emphasised
    assert low.num_rows == high.num_rows == 3
    assert set(low['domain'].to_pylist()) == {0} and set(high['domain'].to_pylist()) == {2}
    assert analysis.data_map.num_rows == 48  # every sample, when there are fewer than map_points


def test_per_sample_table_can_go_to_a_file_and_the_data_map_is_a_sample(tmp_path):
    synthetic_history(tmp_path / 'history')
    analysis = analyze_history(tmp_path / 'history', samples_to=tmp_path / 'samples.parquet', map_points=10)
    assert analysis.samples is None and analysis.data_map.num_rows == 10
    samples = pq.read_table(tmp_path / 'samples.parquet')
    assert samples.num_rows == 48 and samples['sample_id'].to_pylist() == sorted(samples['sample_id'].to_pylist())
    again = analyze_history(tmp_path / 'history', samples_to=tmp_path / 'again.parquet', map_points=10)
    # the same samples every run; their averages may differ in the last bits (DuckDB sums in parallel)
    assert again.data_map['sample_id'].equals(analysis.data_map['sample_id'])
    for column in ('visits', 'domain'):
        assert again.data_map[column].equals(analysis.data_map[column])
    for column in ('mean_loss', 'loss_std', 'mean_rel_weight'):
        assert np.allclose(again.data_map[column].to_numpy(), analysis.data_map[column].to_numpy(), rtol=1e-12)


def test_truncated_part_is_left_out_and_named_with_its_steps_and_rows(tmp_path, capsys):
    synthetic_history(tmp_path / 'history')
    victim = sorted((tmp_path / 'history' / 'rank0').glob('part-*.parquet'))[-1]
    victim.write_bytes(victim.read_bytes()[:100])  # what a full disk or a cut-short copy leaves
    with pytest.warns(UserWarning, match=r'1 unreadable part\(s\) skipped: .*part-000000030-000000039.parquet'):
        table = load_history(str(tmp_path / 'history'))
    assert table.num_rows == 30 * 12
    analysis = analyze_history(str(tmp_path / 'history'))
    assert analysis.rows == 30 * 12
    # it held the 12 rows of each of steps 30-39: the readable parts' rows per step give the estimate
    assert [(m.first_step, m.last_step, m.rows) for m in analysis.missing] == [(30, 39, 120)]
    assert main(['analyze', str(tmp_path), '--out', str(tmp_path / 'out')]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('reweigh analyze: warning: the history is incomplete: 1 unreadable part')
    assert 'steps 30-39, about 120 rows' in err[0] and str(victim) in err[0]
    assert 'Incomplete history:' in (tmp_path / 'out' / 'report.md').read_text()


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='no loss-history part files'):
        load_history(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='no loss-history part files'):
        analyze_history(str(tmp_path))


def test_uniform_run_reports_no_reweighting(tmp_path):
    table = synthetic_history(tmp_path)
    uniform = table.set_column(table.schema.get_field_index('active'), 'active', pa.array([False] * table.num_rows))
    analysis = analyze_history(uniform)
    assert analysis.first_active_step is None and most_deprioritised_domain(analysis.summary) is None
    report = write_report(analysis, tmp_path / 'out', ['code', 'docs', 'boilerplate'])
    assert 'never (uniform run)' in report.read_text()


def test_report_files_and_contents(tmp_path):
    synthetic_history(tmp_path / 'history')
    analysis = analyze_history(str(tmp_path / 'history'))
    report = write_report(
        analysis, tmp_path / 'out', ['code', 'docs', 'boilerplate'], text_of=lambda ids: [f'text of {i}' for i in ids],
    )
    out = tmp_path / 'out'
    for name in ('report.md', 'domains_over_time.png', 'weight_distribution.png', 'data_map.png',
                 'domain_summary.csv', 'domain_summary.parquet', 'samples.parquet', 'weight_quantiles.csv'):
        assert (out / name).stat().st_size > 0, name
    text = report.read_text()
    assert '**Most deprioritised domain: code** (mean weight 0.500 x uniform' in text
    assert '| code | 160 | 16 |' in text
    assert 'text of 0' in text  # a domain-0 sample is among the most deprioritised
    summary = pq.read_table(out / 'domain_summary.parquet').to_pydict()
    assert summary['domain_name'] == ['code', 'docs', 'boilerplate']
    assert np.allclose(summary['mean_rel_weight'], [0.5, 1.0, 1.5])


def test_analyze_a_history_in_object_storage(tmp_path, s3_env, capsys):
    import boto3

    table = synthetic_history(tmp_path / 'history')
    client = boto3.client('s3', endpoint_url=s3_env)
    for part in sorted((tmp_path / 'history' / 'rank0').iterdir()):
        client.upload_file(str(part), 'reweigh', f'runs/toy/history/rank0/{part.name}')
    remote = load_history('s3://reweigh/runs/toy/history')
    assert remote.sort_by('step').equals(table.sort_by('step'))
    assert main(['analyze', 's3://reweigh/runs/toy', '--out', str(tmp_path / 'out')]) == 0
    assert 'most deprioritised domain: 0' in capsys.readouterr().out
    assert (tmp_path / 'out' / 'report.md').is_file()


def test_analyze_imports_neither_torch_nor_composer_nor_streaming(tmp_path):
    import subprocess
    import sys

    synthetic_history(tmp_path / 'history')
    code = (
        'import sys; from reweigh.cli.main import main; '
        f'assert main(["analyze", {str(tmp_path)!r}, "--out", {str(tmp_path / "out")!r}]) == 0; '
        'heavy = sorted(m for m in ("torch", "composer", "streaming", "transformers") if m in sys.modules); '
        'print("heavy:", heavy)'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert 'heavy: []' in out, out
    assert (tmp_path / 'out' / 'report.md').is_file() and (tmp_path / 'out' / 'samples.parquet').is_file()
    with_plotly = importlib.util.find_spec('plotly') is not None
    assert (tmp_path / 'out' / 'report.html').is_file() == with_plotly
    assert ('interactive report: not written' in out) != with_plotly, out


@pytest.mark.composer  # the dataset is prepared with the pipeline
def test_analyze_with_the_dataset_shows_sample_text_without_the_training_stack(tmp_path, small_dataset):
    import json
    import subprocess
    import sys

    from reweigh.pipeline import SampleLookup, make_sample_id

    root, _ = small_dataset
    ids = [make_sample_id(d, 'train', j) for d in range(3) for j in range(2)]
    rows = {name: [] for name in HISTORY_SCHEMA.names}
    for step in range(2):
        for k, sid in enumerate(ids):
            values = {'step': step, 'microbatch': 0, 'rank': 0, 'sample_id': sid, 'domain': k // 2, 'tokens': 10, 'mix': -1,
                      'loss': 1.0 + k // 2, 'weight': (0.05 if k < 2 else 0.225), 'r': 1.0, 'active': step == 1}
            for name, value in values.items():
                rows[name].append(value)
    (tmp_path / 'history' / 'rank0').mkdir(parents=True)
    pq.write_table(pa.table(rows, schema=HISTORY_SCHEMA), tmp_path / 'history' / 'rank0' / 'part-000000000-000000001.parquet')
    (tmp_path / 'summary.json').write_text(json.dumps({'history': str(tmp_path / 'history'), 'dataset': str(root)}))
    code = (
        'import sys; from reweigh.cli.main import main; '
        f'assert main(["analyze", {str(tmp_path)!r}, "--top", "1"]) == 0; '
        'print("heavy:", sorted(m for m in ("torch", "composer", "streaming", "transformers") if m in sys.modules))'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert 'heavy: []' in out and 'most deprioritised domain: code' in out, out
    snippet = ' '.join(SampleLookup(root).text(ids[0]).split())[:40].replace('|', '\\|')
    assert snippet in (tmp_path / 'analysis' / 'report.md').read_text()
    if importlib.util.find_spec('plotly') is not None:  # reweigh[explore]: the interactive report too
        page = (tmp_path / 'analysis' / 'report.html').read_text()
        first_line = html.escape(SampleLookup(root).text(ids[0]).splitlines()[0][:40])  # in the data map's hover
        assert f'sample {ids[0]}' in page and first_line in page and '<script src=' not in page
        assert 'interactive report: ' in out
