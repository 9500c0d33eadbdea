"""`reweigh explore`'s views and routes, without a browser: what each view answers, that the curation counts are
`reweigh curate`'s, that nothing a request sends reads other files or runs SQL, and the command's one-line errors.

The browser tests are in tests/test_explore_browser.py.
"""

import json
import shutil
import socket

import numpy as np
import pyarrow as pa
import pytest

for _module in ('starlette', 'uvicorn', 'plotly', 'streaming'):  # reweigh[explore] and reweigh[composer]
    pytest.importorskip(_module)
from starlette.testclient import TestClient  # noqa: E402
from test_curate import _real_history  # noqa: E402

from reweigh.analysis import analyze_history  # noqa: E402
from reweigh.analysis.curation import Rules, select  # noqa: E402
from reweigh.cli.main import main  # noqa: E402
from reweigh.explore.app import create_app  # noqa: E402
from reweigh.explore.views import Explorer  # noqa: E402
from reweigh.pipeline import SampleLookup, make_sample_id  # noqa: E402
from reweigh.pipeline.manifest import read_manifest  # noqa: E402


def weight_of(domain, j):
    """Boilerplate's even samples get a quarter of uniform's weight, docs' every third 0.6, the rest a bit more."""
    if domain == 2 and j % 2 == 0:
        return 0.25
    return 0.6 if domain == 1 and j % 3 == 0 else 1.1


def loss_of(domain, j, step):
    """Lower for boilerplate; how much it moves between visits differs from sample to sample (the map's y axis)."""
    return 1.0 + (2 - domain) * 0.5 + 0.001 * j + (j % 7) * 0.03 * (step % 2 - 0.5)


def explore_run(folder, small_dataset):
    """A run folder whose history visits every training sample of the small dataset 4 times (``folder`` may hold a
    run's other files already)."""
    root, prepared = small_dataset
    run = _real_history(folder, prepared.manifest, weight_of, loss_of=loss_of)
    (run / 'summary.json').write_text(json.dumps({'history': str(run / 'history'), 'dataset': str(root)}))
    return run


@pytest.fixture(scope='module')
def explored(small_dataset, tmp_path_factory):
    run = explore_run(tmp_path_factory.mktemp('explore') / 'run', small_dataset)
    explorer = Explorer(run)
    yield run, explorer, TestClient(create_app(explorer))
    explorer.close()


def test_the_overview_names_the_run_its_domains_and_the_maps_extent(explored, small_dataset):
    run, _, client = explored
    manifest = small_dataset[1].manifest
    o = client.get('/api/overview').json()
    assert o['samples'] == sum(d.sequences['train'] for d in manifest.domains)
    assert o['rows'] == 4 * o['samples'] and o['steps'] == 4 and o['first_active_step'] == 1
    assert o['domain_names'] == manifest.domain_names and [d['name'] for d in o['domains']] == manifest.domain_names
    assert o['text_unavailable'] is None and set(o['axes']) == {'loss_std', 'mean_rel_weight'}


def test_the_map_is_points_for_a_small_region_and_bins_for_a_large_one(explored):
    _, explorer, client = explored
    points = client.get('/api/map', params={'y': 'mean_rel_weight', 'color': 'weight'}).json()
    assert points['kind'] == 'points' and points['count'] == len(points['sample_id'])
    samples = analyze_history(explorer.history).samples.to_pylist()
    by_id = {s['sample_id']: s for s in samples}
    for sid, x, y in zip(points['sample_id'], points['x'], points['y']):
        assert x == pytest.approx(by_id[sid]['mean_loss']) and y == pytest.approx(by_id[sid]['mean_rel_weight'])
    binned = explorer.data_map('mean_rel_weight', 'domain', max_points=10, bins=8)
    assert binned['kind'] == 'bins' and sum(binned['n']) == points['count']
    assert all(0 <= i < 8 for i in binned['i']) and all(0 <= j < 8 for j in binned['j'])
    # every boilerplate sample at a quarter of uniform: the lowest cells of the weight axis hold only domain 2
    lowest = min(binned['j'])
    assert {c for j, c in zip(binned['j'], binned['color']) if j == lowest} == {2}
    # a region, and one domain
    x0, x1, y0, y1 = 0.0, 10.0, 0.0, 0.5
    region = client.get('/api/map', params={'y': 'mean_rel_weight', 'x0': x0, 'x1': x1, 'y0': y0, 'y1': y1}).json()
    assert region['count'] == sum(1 for s in samples if s['mean_rel_weight'] <= 0.5) > 0
    assert set(region['domain']) == {2}
    docs = client.get('/api/map', params={'domain': 1}).json()
    assert set(docs['domain']) == {1} and docs['count'] == sum(1 for s in samples if s['domain'] == 1)


def test_a_sample_has_its_text_documents_and_every_visit(explored, small_dataset):
    root, _ = small_dataset
    _, _, client = explored
    sid = make_sample_id(2, 'train', 4)
    s = client.get(f'/api/sample/{sid}').json()
    assert s['domain_name'] == 'boilerplate' and s['visits'] == 4
    assert s['text'] == SampleLookup(root).text(sid) and s['documents']
    t = s['trajectory']
    assert t['step'] == [0, 1, 2, 3] and t['active'] == [False, True, True, True]
    assert t['rel_weight'] == pytest.approx([0.25] * 4, rel=1e-5)  # weight x rows of its step: relative to uniform
    assert t['loss'] == pytest.approx([loss_of(2, 4, step) for step in range(4)])
    assert client.get('/api/sample/123456789').status_code == 404


@pytest.mark.parametrize('rules', [
    {'drop_below': 0.5}, {'drop_below': 0.7, 'min_visits': 3}, {'keep_top': 0.5, 'score': 'loss'},
    {'drop_easy_stable': 0.3}, {'cap': 'docs=5', 'drop_below': 0.3},
])
def test_the_curation_counts_are_reweigh_curates(explored, tmp_path, capsys, rules):
    run, _, client = explored
    c = client.get('/api/curate', params=rules).json()
    args = []
    for key, value in rules.items():
        args += [f'--{key.replace("_", "-")}', str(value)]
    out = tmp_path / 'curated'
    assert main(['curate', str(run), '--out', str(out), *args]) == 0
    curated = read_manifest(out)
    for entry in c['domains']:
        info = next(d for d in curated.domains if d.name == entry['name'])
        assert entry['kept'] == info.sequences['train'], (entry, rules)
        assert entry['kept_tokens'] == info.tokens['train'], (entry, rules)
        assert entry['samples'] == entry['kept'] + entry['dropped']
    assert c['exact'] and c['command'].startswith(f'reweigh curate {run} --out CURATED_DIR')
    capsys.readouterr()


def test_the_curation_panel_shows_examples_and_what_each_rule_dropped(explored):
    run, explorer, client = explored
    c = client.get('/api/curate', params={'drop_below': 0.5, 'out': 'data/next'}).json()
    boilerplate = next(d for d in c['domains'] if d['name'] == 'boilerplate')
    assert boilerplate['dropped'] == (boilerplate['samples'] + 1) // 2  # the even ones
    assert [e['reason'] for e in boilerplate['examples']] == ['weight below 0.5'] * len(boilerplate['examples'])
    assert all(e['text'] for e in boilerplate['examples'])
    assert c['reasons'] == {'weight below 0.5': boilerplate['dropped']}
    assert ' --out data/next --drop-below 0.5 --min-visits 1 ' in c['command'] + ' '
    selection = select(analyze_history(explorer.history).samples, Rules(drop_below=0.5))
    assert sum(d['dropped'] for d in c['domains']) == len(selection.dropped)
    nothing = client.get('/api/curate').json()  # no rule: nothing dropped, no error
    assert all(d['dropped'] == 0 for d in nothing['domains'])


@pytest.mark.parametrize('route, params, message', [
    ('/api/map', {'y': 'loss_std; DROP TABLE samples'}, 'y must be one of'),
    ('/api/map', {'color': "domain' OR 1=1 --"}, 'color must be one of'),
    ('/api/map', {'x0': '1', 'x1': '0', 'y0': '0', 'y1': '1'}, 'region must be'),
    ('/api/map', {'x0': '0'}, 'a region needs all of'),
    ('/api/map', {'x0': 'nan', 'x1': '1', 'y0': '0', 'y1': '1'}, 'x0 must be finite'),
    ('/api/map', {'sql': 'SELECT 1'}, "unknown parameter 'sql'"),
    ('/api/map', {'bins': '100000'}, 'bins must be in'),
    ('/api/curate', {'drop_below': '-1'}, '--drop-below must be a number > 0'),
    ('/api/curate', {'drop_below': "0.5'); COPY"}, 'drop_below must be a number'),
    ('/api/curate', {'cap': 'nodomain=3'}, '--cap nodomain: no such domain'),
    ('/api/curate', {'cap': 'docs'}, 'cap must be DOMAIN=N'),
    ('/api/curate', {'score': 'text'}, 'score must be one of'),
    ('/api/overview', {'path': '/etc/passwd'}, "unknown parameter 'path'"),
])
def test_bad_requests_are_refused_with_the_reason(explored, route, params, message):
    _, _, client = explored
    response = client.get(route, params=params)
    assert response.status_code == 400 and message in response.json()['error'], response.json()


def test_no_request_reads_a_file_outside_the_app(explored):
    _, _, client = explored
    for path in ('/static/../../../etc/passwd', '/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd', '/static/app.py',
                 '/static/index.html/../../views.py', '/static/..%2fviews.py', '/etc/passwd'):
        response = client.get(path)
        assert response.status_code == 404 and 'root:' not in response.text, path
    assert client.get('/api/sample/1%20OR%201=1').status_code == 404  # not an integer: no route
    page = client.get('/')
    assert page.status_code == 200 and '/static/plotly.min.js' in page.text
    for name in ('explore.js', 'explore.css', 'plotly.min.js'):
        assert client.get(f'/static/{name}').status_code == 200
    assert 'cdn' not in page.text.lower() and 'https://' not in page.text


def test_without_its_dataset_the_app_still_opens_and_says_text_is_unavailable(small_dataset, tmp_path):
    run = explore_run(tmp_path / 'run', small_dataset)
    copy = tmp_path / 'gone'
    shutil.copytree(small_dataset[0], copy)
    (run / 'summary.json').write_text(json.dumps({'history': str(run / 'history'), 'dataset': str(copy)}))
    shutil.rmtree(copy)
    explorer = Explorer(run)
    try:
        client = TestClient(create_app(explorer))
        o = client.get('/api/overview').json()
        assert o['text_unavailable'].startswith(f'cannot read the dataset {copy}')
        s = client.get(f'/api/sample/{make_sample_id(0, "train", 0)}').json()
        assert s['text'] is None and s['text_unavailable'] == o['text_unavailable'] and s['visits'] == 4
        c = client.get('/api/curate', params={'drop_below': 0.5}).json()
        assert not c['exact'] and all(d['kept_tokens'] is None for d in c['domains'])
        assert sum(d['dropped'] for d in c['domains']) > 0
        assert client.get('/api/map').json()['count'] == o['samples']
    finally:
        explorer.close()


def test_explore_errors_are_one_line_and_exit_2(small_dataset, tmp_path, capsys):
    assert main(['explore', str(tmp_path / 'missing')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'does not exist' in err[0], err
    (tmp_path / 'empty').mkdir()
    assert main(['explore', str(tmp_path / 'empty'), '--port', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('reweigh explore: error: ') and 'no loss history' in err[0], err
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = explore_run(tmp_path / 'run', small_dataset)
        assert main(['explore', str(run), '--port', str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'reweigh explore: error: port {port} on 127.0.0.1 is in use; pick another with --port (0 picks a free one)']


def test_the_tokens_of_a_domains_last_shorter_sample_are_counted(explored, small_dataset):
    _, explorer, _ = explored
    manifest = small_dataset[1].manifest
    for d in manifest.domains:
        total = d.sequences['train']
        keep_all = explorer.curation(Rules())['domains'][d.index]
        assert keep_all['kept_tokens'] == d.tokens['train'] and keep_all['kept'] == total
        assert np.isclose(d.tokens['train'] / total, manifest.seq_len, rtol=0.5)


def test_a_second_start_opens_the_cache_and_a_changed_history_rebuilds_it(small_dataset, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = explore_run(tmp_path / 'run', small_dataset)
    sid = make_sample_id(1, 'train', 3)
    first = Explorer(run)
    assert first.built and first.cache == run / 'analysis' / 'explore.duckdb' and first.cache.is_file()
    before = first.data_map(), first.sample(sid)
    first.close()
    again = Explorer(run)
    assert not again.built and (again.data_map(), again.sample(sid)) == before
    again.close()
    part = next((run / 'history' / 'rank0').glob('part-*.parquet'))
    table = pq.read_table(part)
    pq.write_table(table.set_column(table.schema.get_field_index('loss'), 'loss', pc.multiply(table['loss'], 2.0)), part)
    changed = Explorer(run)
    try:
        assert changed.built
        assert changed.sample(sid)['trajectory']['loss'] == pytest.approx([2 * x for x in before[1]['trajectory']['loss']])
    finally:
        changed.close()


def test_where_the_cache_cannot_be_written_it_lives_for_the_session(small_dataset, tmp_path):
    run = explore_run(tmp_path / 'run', small_dataset)
    (tmp_path / 'a-file').write_text('')
    explorer = Explorer(run, cache_dir=tmp_path / 'a-file' / 'cache')  # cannot be a folder
    try:
        assert explorer.built and explorer.cache.is_file() and not str(explorer.cache).startswith(str(tmp_path))
        assert explorer.data_map()['count'] == explorer.overview()['samples']
    finally:
        explorer.close()
    assert not explorer.cache.exists()


def test_several_runs_are_set_side_by_side_as_reweigh_compare_groups_them(small_dataset, tmp_path):
    from test_compare import _study

    from reweigh.analysis.compare import compare_runs
    from reweigh.analysis.runs import load_run

    paths = _study(tmp_path / 'study')
    explore_run(paths[0], small_dataset)  # the run explored has a history; the others need none
    explorer = Explorer(paths[0], compare=paths[1:])
    try:
        r = TestClient(create_app(explorer)).get('/api/runs').json()
        want = compare_runs([load_run(p) for p in paths], histories=False)
        assert r['arms'] == ['uniform', 'linupper'] and r['baseline'] == 'uniform' and len(r['runs']) == 6
        code = r['curves']['code']['linupper']
        rows = [row for row in want.curves.to_pylist() if row['arm'] == 'linupper' and row['domain'] == 'code']
        assert code['step'] == [row['step'] for row in rows]
        assert code['mean'] == pytest.approx([row['loss_mean'] for row in rows])
        assert code['min'] == pytest.approx([row['loss_min'] for row in rows])
        final = {(f['arm'], f['domain']): f for f in r['final']}
        assert final[('linupper', 'code')]['step_ratio'] == pytest.approx(0.8, abs=0.01)
    finally:
        explorer.close()
    names = {str(p): 'base' if 'uniform' in p.name else 'lin' for p in paths}  # reweigh compare's ARM=RUN
    named = Explorer(paths[0], compare=paths[1:], arm_names=names)
    try:
        assert named.runs()['arms'] == ['base', 'lin'] and named.runs()['baseline'] == 'base'
    finally:
        named.close()
    alone = Explorer(explore_run(tmp_path / 'alone', small_dataset))  # no metrics.jsonl: nothing to set beside it
    try:
        assert alone.runs()['arms'] == [] and 'has no metrics.jsonl' in alone.runs()['note']
    finally:
        alone.close()
    other = Explorer(paths[0], compare=[tmp_path / 'alone'])
    try:
        with pytest.raises(ValueError, match='has no metrics.jsonl'):
            other.runs()
    finally:
        other.close()


def test_a_history_in_object_storage_is_explored_where_it_is(small_dataset, tmp_path, s3_env):
    import boto3

    local = explore_run(tmp_path / 'run', small_dataset)
    client = boto3.client('s3', endpoint_url=s3_env)
    for part in sorted((local / 'history' / 'rank0').iterdir()):
        client.upload_file(str(part), 'reweigh', f'runs/explored/history/rank0/{part.name}')
    remote = Explorer('s3://reweigh/runs/explored', dataset=str(small_dataset[0]), cache_dir=tmp_path / 'cache')
    here = Explorer(local)
    try:
        assert remote.built and remote.cache == tmp_path / 'cache' / 'explore.duckdb'
        assert remote.data_map() == here.data_map()
        sid = make_sample_id(0, 'train', 2)
        assert remote.sample(sid) == here.sample(sid)
        assert remote.curation(Rules(drop_below=0.5))['domains'] == here.curation(Rules(drop_below=0.5))['domains']
    finally:
        remote.close()
        here.close()
    again = Explorer('s3://reweigh/runs/explored', dataset=str(small_dataset[0]), cache_dir=tmp_path / 'cache')
    try:
        assert not again.built  # the parts' sizes and times in the bucket are the key
    finally:
        again.close()


@pytest.mark.parametrize('flags', [['--drop-unvisited'], ['--drop-unvisited', '--drop-below', '0.5'], ['--drop-below', '0.5']])
def test_samples_the_history_never_saw_are_counted_as_reweigh_curate_counts_them(small_dataset, tmp_path, capsys, flags):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from reweigh.pipeline.ids import decode_sample_ids

    manifest = small_dataset[1].manifest
    run = explore_run(tmp_path / 'run', small_dataset)
    part = next((run / 'history' / 'rank0').glob('part-*.parquet'))
    table = pq.read_table(part)
    domain, _, index = decode_sample_ids(table['sample_id'].to_numpy())
    last = np.array([manifest.domains[d].sequences['train'] - 1 for d in domain])
    unseen = (domain == 1) & ((index % 3 == 1) | (index == last))  # docs: a third, and its last, shorter sample
    pq.write_table(table.filter(pc.invert(pa.array(unseen))), part)
    explorer = Explorer(run)
    try:
        rules = {'--drop-unvisited': ('drop_unvisited', 'true'), '--drop-below': ('drop_below', '0.5')}
        params = {rules[f][0]: rules[f][1] for f in flags if f in rules}
        c = TestClient(create_app(explorer)).get('/api/curate', params=params).json()
    finally:
        explorer.close()
    assert main(['curate', str(run), '--out', str(tmp_path / 'curated'), *flags]) == 0
    capsys.readouterr()
    curated = {d.name: d for d in read_manifest(tmp_path / 'curated').domains}
    for entry in c['domains']:
        assert (entry['kept'], entry['kept_tokens']) == (curated[entry['name']].sequences['train'],
                                                         curated[entry['name']].tokens['train']), (entry, flags)
    docs = next(e for e in c['domains'] if e['name'] == 'docs')
    assert docs['visited'] < docs['samples']


def test_the_whole_map_binned_at_build_time_is_the_map_binned_now(explored):
    from reweigh.explore.views import COLORS, DEFAULT_BINS, MAP_AXES, _data_map

    _, explorer, _ = explored
    assert explorer._query('SELECT count(*) AS n FROM whole_maps')['n'][0].as_py() == len(MAP_AXES) * len(COLORS)
    for y in MAP_AXES:
        for color in COLORS:
            stored = explorer.data_map(y, color, max_points=10)
            assert stored['kind'] == 'bins'
            assert stored == _data_map(explorer._query, y, color, None, None, DEFAULT_BINS, 10), (y, color)
