"""`reweigh curate --proportions`: domain proportions from a run's loss history."""

import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from test_analysis import REL, synthetic_history

from reweigh.analysis.proportions import domain_proportions, floored
from reweigh.cli.main import main
from reweigh.train.config import load_config


def _summary(weight_share, row_share):
    return pa.table({'domain': list(range(len(row_share))), 'weight_share': weight_share, 'row_share': row_share})


def test_the_formula():
    s = _summary([0.2, 0.3, 0.5], [0.5, 0.3, 0.2])
    assert domain_proportions(s) == pytest.approx({0: 0.2, 1: 0.3, 2: 0.5})  # T = 1: the weight shares
    assert domain_proportions(s, temperature=1e6) == pytest.approx({0: 0.5, 1: 0.3, 2: 0.2}, abs=1e-5)  # the mix
    sharp = domain_proportions(s, temperature=0.5)  # q ∝ p * (s/p)^2 = s^2 / p
    z = 0.2**2 / 0.5 + 0.3**2 / 0.3 + 0.5**2 / 0.2
    assert sharp == pytest.approx({0: 0.08 / z, 1: 0.3 / z, 2: 1.25 / z})
    assert floored({0: 0.9, 1: 0.08, 2: 0.02}, 0.1) == pytest.approx({0: 0.8, 1: 0.1, 2: 0.1})
    assert math.fsum(floored({0: 0.5, 1: 0.3, 2: 0.2}, 1 / 3).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='floor must be in'):
        floored({0: 1.0, 1: 0.0}, 0.6)
    with pytest.raises(ValueError, match='temperature must be'):
        domain_proportions(s, temperature=0.0)
    with pytest.raises(ValueError, match='never reweighted'):
        domain_proportions(_summary([None, None], [None, None]))


def _run(folder, dataset):
    synthetic_history(folder / 'history')
    (folder / 'summary.json').write_text(json.dumps({'history': str(folder / 'history'), 'dataset': str(dataset)}))
    return folder


def test_cli_prints_and_writes_a_snippet_reweigh_train_accepts(tmp_path, small_dataset, capsys):
    root, prepared = small_dataset
    run = _run(tmp_path / 'run', root)
    assert main(['curate', str(run), '--proportions', '--floor', '0.2']) == 0
    printed = capsys.readouterr().out
    shares = {d: REL[d] / 3 for d in range(3)}  # every domain has a third of the rows
    want = floored(shares, 0.2)
    assert want[0] == pytest.approx(0.2)  # code was at 1/6: lifted to the floor
    written = yaml.safe_load((run / 'proportions.yaml').read_text())['train_loader']['dataset']['proportions']
    assert list(written) == prepared.manifest.domain_names == ['code', 'docs', 'boilerplate']
    assert list(written.values()) == pytest.approx([want[0], want[1], want[2]], abs=1e-4)
    override = printed.split('as an override: ', 1)[1].strip().strip("'")
    from test_train_cli import TINY_CPU

    config = load_config(TINY_CPU, [override, f'train_loader.dataset.local={root}', f'eval_loader.dataset.local={root}'])
    assert dict(config.train_loader.dataset.proportions) == written


def _rewrite(run, column, values):
    """Replace ``column`` of every history part of ``run`` with ``values(table[column])``."""
    for part in (run / 'history' / 'rank0').iterdir():
        table = pq.read_table(part)
        pq.write_table(table.set_column(table.schema.get_field_index(column), column, values(table[column])), part)


@pytest.mark.parametrize('case, message', [
    ('uniform', 'the run never reweighted'),
    ('no-dataset', 'name it with --dataset ROOT'),
    ('other-dataset', 'the history has domain 5 but'),
    ('no-run', 'does not exist'),
])
def test_curate_errors_are_one_line_exit_2(tmp_path, small_dataset, capsys, case, message):
    root, _ = small_dataset
    run = _run(tmp_path / 'run', root)
    if case == 'uniform':  # reweighting never on: no weight shares
        _rewrite(run, 'active', lambda c: pa.array([False] * len(c)))
    elif case == 'no-dataset':
        (run / 'summary.json').write_text(json.dumps({'history': str(run / 'history')}))
    elif case == 'other-dataset':  # domains 3..5: not the 3-domain dataset the summary names
        _rewrite(run, 'domain', lambda c: pc.add(c, 3))
    target = str(tmp_path / 'nowhere') if case == 'no-run' else str(run)
    assert main(['curate', target, '--proportions']) == 2
    err = capsys.readouterr().err
    assert err.startswith('reweigh curate: error: ') and message in err and err.count('\n') == 1


def test_curate_a_history_in_object_storage(tmp_path, small_dataset, s3_env, capsys):
    import boto3

    root, _ = small_dataset
    synthetic_history(tmp_path / 'history')
    client = boto3.client('s3', endpoint_url=s3_env)
    for part in sorted((tmp_path / 'history' / 'rank0').iterdir()):
        client.upload_file(str(part), 'reweigh', f'runs/curate/history/rank0/{part.name}')
    out = tmp_path / 'p.yaml'
    command = ['curate', 's3://reweigh/runs/curate', '--proportions', '--dataset', str(root), '--proportions-out', str(out)]
    assert main(command) == 0
    written = yaml.safe_load(out.read_text())['train_loader']['dataset']['proportions']
    assert list(written.values()) == pytest.approx([REL[d] / 3 for d in range(3)], abs=1e-4)


# --- curated datasets -------------------------------------------------------------------------------------------

def _real_history(folder, manifest, weight_of=lambda domain, j: 1.0, steps=4, sample_id=None,
                  loss_of=lambda domain, j, step: 1.0 + domain + 0.001 * j):
    """A reweighted history over every training sample of ``manifest``: each visited ``steps`` times, reweighted
    after the first step with relative weight ``weight_of(domain, j)``, with loss ``loss_of(domain, j, step)``."""
    from reweigh.analysis import HISTORY_SCHEMA
    from reweigh.pipeline import make_sample_id

    ids = [(d.index, j) for d in manifest.domains for j in range(d.sequences['train'])]
    rows = {name: [] for name in HISTORY_SCHEMA.names}
    for step in range(steps):
        for domain, j in ids:
            values = {'step': step, 'microbatch': 0, 'rank': 0, 'domain': domain, 'tokens': 64, 'mix': -1,
                      'sample_id': make_sample_id(domain, 'train', j) if sample_id is None else sample_id,
                      'loss': loss_of(domain, j, step), 'weight': weight_of(domain, j) / len(ids),
                      'r': 1.0, 'active': step > 0}
            for name, value in values.items():
                rows[name].append(value)
    (folder / 'history' / 'rank0').mkdir(parents=True)
    part = folder / 'history' / 'rank0' / f'part-000000000-{steps - 1:09d}.parquet'
    pq.write_table(pa.table(rows, schema=HISTORY_SCHEMA), part)
    return folder


def _curate_run(tmp_path, small_dataset):
    root, prepared = small_dataset
    # boilerplate (domain 2) samples with an even index get a quarter of uniform's weight: those go
    weight = lambda d, j: 0.25 if d == 2 and j % 2 == 0 else 1.1  # noqa: E731
    run = _real_history(tmp_path / 'run', prepared.manifest, weight)
    (run / 'summary.json').write_text(json.dumps({'history': str(run / 'history'), 'dataset': str(root)}))
    return run, root, prepared.manifest


def test_curate_round_trip_keeps_ids_text_and_validation_then_trains(tmp_path, small_dataset, streaming_shm, capsys):
    from test_train_cli import TINY_CPU, _overrides

    from reweigh.pipeline import SampleLookup, make_sample_id

    run, root, manifest = _curate_run(tmp_path, small_dataset)
    out = tmp_path / 'curated'
    assert main(['curate', str(run), '--out', str(out), '--drop-below', '0.5', '--min-visits', '2']) == 0
    printed = capsys.readouterr().out
    boiler = manifest.domain('boilerplate').sequences['train']
    dropped = (boiler + 1) // 2
    assert f'boilerplate: kept {boiler - dropped:>7,} samples' in printed and 'samples/s' in printed

    source, curated = SampleLookup(root), SampleLookup(out)
    assert curated.manifest.curation['rules']['drop_below'] == 0.5
    assert curated.manifest.curation['source_run'] == str(run)
    assert curated.manifest.domain('boilerplate').sequences['train'] == boiler - dropped
    assert curated.manifest.domain('code').sequences == manifest.domain('code').sequences
    kept, gone = make_sample_id(2, 'train', 1), make_sample_id(2, 'train', 2)
    assert curated.text(kept) == source.text(kept) and curated.documents(kept) == source.documents(kept)
    with pytest.raises(KeyError, match='was dropped'):
        curated.text(gone)
    for d in manifest.domain_names:  # validation splits byte for byte
        for f in (root / 'val' / d).iterdir():
            if f.suffix != '.mds':  # Streaming decompresses shards in place when it reads them
                assert (out / 'val' / d / f.name).read_bytes() == f.read_bytes()
    report = (run / 'curation' / 'report.md').read_text()
    assert f'| boilerplate | {boiler - dropped} |' in report and 'weight below 0.5' in report

    # a run on the curated dataset; its history joins the original's ids, and analyze finds their text
    train_dir = tmp_path / 'train'
    overrides = _overrides(out, train_dir, max_duration='4ba', eval_interval='4ba', save_interval='4ba')
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    history = pq.read_table(next((train_dir / 'history' / 'rank0').iterdir()))
    assert not {i for i in history['sample_id'].to_pylist() if i >> 48 == 2 and (i & 0xFFFF) % 2 == 0}
    assert main(['analyze', str(train_dir)]) == 0


def test_curate_writes_to_a_bucket(tmp_path, small_dataset, s3_env, capsys, monkeypatch):
    from reweigh.io import objects
    from reweigh.pipeline import SampleLookup, make_sample_id

    run, root, manifest = _curate_run(tmp_path, small_dataset)
    uploads, upload = [], objects.upload
    monkeypatch.setattr(objects, 'upload', lambda local, remote, files: (uploads.append(files), upload(local, remote, files)))
    assert main(['curate', str(run), '--out', 's3://reweigh/curated', '--keep-top', '0.5', '--score', 'loss']) == 0
    [files] = uploads  # the staged files in one upload, the manifest last: it marks the dataset complete
    assert files[-1] == 'manifest.json' and 'manifest.json' not in files[:-1]
    assert {f'curation/{d}.parquet' for d in manifest.domain_names} <= set(files)
    curated = SampleLookup('s3://reweigh/curated', tmp_path / 'cache')
    for d in manifest.domains:  # the upper half by loss of each domain: the higher indices
        n = d.sequences['train']
        assert curated.manifest.domain(d.name).sequences['train'] == -(-n // 2)
        top = make_sample_id(d.index, 'train', n - 1)
        assert curated.text(top) == SampleLookup(root).text(top)
    assert main(['curate', str(run), '--out', 's3://reweigh/curated', '--keep-top', '0.4']) == 2
    assert 'already holds a different dataset' in capsys.readouterr().err


@pytest.mark.parametrize('case, message', [
    ('no-sample-ids', 'the history has rows without sample ids (-1)'),
    ('drops-everything', 'the rules drop every training sample'),
    ('other-dataset', "sample ids do not match"),
    ('no-rule', 'no rule given'),
    ('not-empty', 'already holds other or incomplete data'),
    ('bad-cap', '--cap web: no such domain'),
])
def test_curate_dataset_errors_are_one_line_exit_2(tmp_path, small_dataset, capsys, case, message):
    run, root, manifest = _curate_run(tmp_path, small_dataset)
    out = tmp_path / 'curated'
    rules = ['--drop-below', '0.5']
    if case == 'no-sample-ids':
        run = _real_history(tmp_path / 'anon', manifest, sample_id=-1)
        rules += ['--dataset', str(root)]
    elif case == 'drops-everything':
        rules = ['--drop-below', '100', '--drop-unvisited']
    elif case == 'other-dataset':
        other = _real_history(tmp_path / 'big', manifest, steps=2)
        _rewrite(other, 'sample_id', lambda c: pc.add(c, 100_000))
        run, rules = other, rules + ['--dataset', str(root)]
    elif case == 'no-rule':
        rules = []
    elif case == 'not-empty':
        out.mkdir()
        (out / 'notes.txt').write_text('mine')
    else:
        rules = ['--cap', 'web=10']
    assert main(['curate', str(run), '--out', str(out), *rules]) == 2
    err = capsys.readouterr().err
    assert err.startswith('reweigh curate: error: ') and message in err and err.count('\n') == 1
    assert not (out / 'manifest.json').exists()  # nothing that looks like a complete dataset
    if case == 'not-empty':
        assert (out / 'notes.txt').read_text() == 'mine'


def test_a_curate_that_fails_half_way_leaves_no_dataset(tmp_path, small_dataset):
    from reweigh.pipeline.curate import curate_dataset

    root, _ = small_dataset
    seen = []

    def keeps(sample_id):
        seen.append(sample_id)
        if len(seen) == 300:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of a domain
        return True

    out = tmp_path / 'curated'
    with pytest.raises(KeyboardInterrupt):
        curate_dataset(str(root), str(out), keeps, {}, progress=False)
    assert not out.exists()  # a folder it created is removed
    out.mkdir()
    (out / 'manifest.json').write_text('{}')  # an older, broken attempt
    with pytest.raises(KeyboardInterrupt):
        seen.clear()
        curate_dataset(str(root), str(out), keeps, {}, progress=False, overwrite=True)
    assert not (out / 'manifest.json').exists()
