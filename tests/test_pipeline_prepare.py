"""reweigh.pipeline prepare: default corpus, inputs, round trip of every sample back to its text, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SMALL

from reweigh.cli.main import main
from reweigh.pipeline import (
    DEFAULT_DOMAINS,
    SampleLookup,
    build_train_dataloader,
    default_corpus,
    make_sample_id,
    parse_domain_arg,
    prepare_dataset,
    read_manifest,
    split_sample_id,
)
from reweigh.pipeline.corpus import stdlib_dir
from reweigh.pipeline.sources import DomainSpec, iter_documents, load_domains_file

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _docs(max_bytes):
    return {d.name: [doc for doc in iter_documents(d) if doc.text.strip()]
            for d in default_corpus(max_bytes_per_domain=max_bytes)}


def test_default_corpus_is_deterministic_capped_and_from_the_python_install():
    a, b = _docs(40_000), _docs(40_000)
    assert list(a) == list(DEFAULT_DOMAINS)
    assert {k: [(d.source, d.text) for d in v] for k, v in a.items()} == \
        {k: [(d.source, d.text) for d in v] for k, v in b.items()}
    for name, docs in a.items():
        size = sum(len(d.text.encode()) for d in docs)
        assert 30_000 < size <= 40_000, (name, size)
        assert len(docs) >= 2
    assert all(d.source.startswith('stdlib:') for d in a['code'])
    assert all(d.source.startswith('pydoc_data.topics:') for d in a['docs'])
    assert (stdlib_dir() / 'os.py').is_file()
    sources = [d.source for d in _docs(600_000)['boilerplate']]
    assert any('LICENSE.txt' in s for s in sources) and any('~copy' in s for s in sources)
    assert any(s.startswith('stdlib:encodings/cp') for s in sources)


def test_round_trip_counts_domains_and_every_sample_maps_back_to_its_text(small_dataset):
    root, result = small_dataset
    manifest = read_manifest(root)
    assert manifest.domain_names == list(DEFAULT_DOMAINS)
    assert manifest.seq_len == SMALL['seq_len'] and manifest.tokenizer['vocab_size'] <= SMALL['vocab_size']
    on_disk = json.loads((root / 'manifest.json').read_text())
    assert on_disk['sample_id_scheme']['domain_shift'] == 48
    assert {d['name']: d['index'] for d in on_disk['domains']} == {'code': 0, 'docs': 1, 'boilerplate': 2}

    lookup = SampleLookup(root)
    tok = lookup.tokenizer
    eos = tok.eos_token
    docs = _docs(SMALL['max_bytes_per_domain'])
    val_every = manifest.config['val_every']
    for split in ('train', 'val'):
        loader = build_train_dataloader(root, split=split, batch_size=16, shuffle=False, drop_last=False)
        seqs: dict[int, dict[int, list[int]]] = {d.index: {} for d in manifest.domains}
        tokens = {d.index: 0 for d in manifest.domains}
        for batch in loader:
            assert batch['input_ids'].shape[1] == manifest.seq_len
            for ids, mask, labels, sid, dom in zip(batch['input_ids'], batch['attention_mask'], batch['labels'],
                                                   batch['sample_id'].tolist(), batch['domain'].tolist()):
                d, s, i = split_sample_id(sid)
                assert (d, s) == (dom, split)
                assert labels[mask == 0].eq(-100).all() and labels[mask == 1].equal(ids[mask == 1])
                n = int(mask.sum())
                assert mask[:n].all() and not mask[n:].any()
                assert np.array_equal(lookup.tokens(sid), ids[:n].numpy())
                seqs[d][i] = ids[:n].tolist()
                assert lookup.text(sid) == tok.decode(seqs[d][i])
                assert lookup.domain(sid) == manifest.domain_names[dom]
                tokens[d] += n
        for info in manifest.domains:
            assert tokens[info.index] == info.tokens[split]
            assert sorted(seqs[info.index]) == list(range(info.sequences[split]))
            # Byte-level BPE is lossless: the sequences of a split, in order, decode to its documents + EOS.
            expected = [doc.text + eos for k, doc in enumerate(docs[info.name]) if (k % val_every == 0) == (split == 'val')]
            concatenated = [t for i in range(info.sequences[split]) for t in seqs[info.index][i]]
            assert tok.decode(concatenated) == ''.join(expected)
            assert info.documents[split] == len(expected)
    assert result.tokens == sum(sum(d.tokens.values()) for d in manifest.domains)


def test_decode_sample_ids_inverts_make_sample_id():
    from reweigh.pipeline import decode_sample_ids

    cases = [(0, 'train', 0), (0, 'val', 0), (2, 'val', 5), (32767, 'train', 2**47 - 1), (32767, 'val', 2**47 - 1)]
    rng = np.random.default_rng(0)
    cases += [(int(d), ('train', 'val')[int(s)], int(i)) for d, s, i in zip(rng.integers(0, 1 << 15, 200),
                                                                           rng.integers(0, 2, 200), rng.integers(0, 2**47, 200))]
    ids = np.array([make_sample_id(*case) for case in cases])
    domain, split, index = decode_sample_ids(ids)
    assert [(d, ('train', 'val')[s], i) for d, s, i in zip(domain.tolist(), split.tolist(), index.tolist())] == cases
    assert [split_sample_id(sid) for sid in ids] == cases
    assert [part.shape for part in decode_sample_ids(ids.reshape(5, -1))] == [(5, len(cases) // 5)] * 3


def test_documents_tables_splits_and_counts_follow_the_split_rule(small_dataset):
    import pyarrow.parquet as pq

    from reweigh.pipeline.splits import document_split, split_documents

    root, _ = small_dataset
    lookup = SampleLookup(root)
    manifest = lookup.manifest
    val_every = manifest.config['val_every']
    for info in manifest.domains:
        table = pq.read_table(root / 'documents' / f'{info.name}.parquet')
        assert table.column_names == ['doc_id', 'split', 'source', 'chars']
        rows = table.to_pylist()
        assert [r['doc_id'] for r in rows] == list(range(len(rows)))
        assert [r['split'] for r in rows] == [document_split(i, val_every) for i in range(len(rows))]
        assert info.documents == split_documents(len(rows), val_every)
        for split in ('train', 'val'):  # a sequence's documents are of its split
            for sample in lookup.samples(info.name, split):
                assert {rows[i]['split'] for i in sample['doc_ids'].tolist()} == {split}


def test_a_prepare_that_fails_half_way_leaves_no_dataset(tmp_path):
    from reweigh.pipeline.sources import Document

    reads = []

    def documents():
        reads.append(1)
        for i in range(200):
            if i == 150 and len(reads) % 2 == 0:  # the second read (after the tokenizer's) writes the shards
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
            yield Document(f'doc{i}', f'document number {i} ' * 20)

    domain = DomainSpec('notes', 'documents', 'notes', factory=documents, fingerprint_data=1)
    out = tmp_path / 'out'
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([domain], out, vocab_size=300, seq_len=16, progress=False)
    assert not out.exists() and len(reads) == 2
    out.mkdir()
    (out / 'manifest.json').write_text('{}')  # an older, broken attempt, replaced and then removed
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([domain], out, vocab_size=300, seq_len=16, progress=False, overwrite=True)
    assert not out.exists()


def test_a_dataset_write_is_claimed_before_written_and_its_manifest_goes_last(tmp_path, monkeypatch):
    from reweigh.io import objects
    from reweigh.pipeline.manifest import Manifest
    from reweigh.pipeline.shards import columns
    from reweigh.pipeline.transaction import DatasetWrite, dataset_write

    manifest = Manifest(seq_len=8, domains=[], tokenizer={'path': 'tokenizer'}, mds={'columns': columns(512)})
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    (theirs / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='already holds other or incomplete data'):
        with dataset_write(theirs, 'reweigh-test-') as write:
            write.claim(write.existing(), overwrite=False)
    assert (theirs / 'notes.txt').read_text() == 'mine'  # a refused claim leaves the output as it was
    uploads = []
    monkeypatch.setattr(objects, 'upload', lambda local, remote, files: uploads.append((remote, list(files))))
    write = DatasetWrite('s3://bucket/data', str(tmp_path / 'scratch'))
    write.claim(None, overwrite=False)
    for rel in ('tokenizer/tokenizer.json', 'documents/code.parquet', 'train/code/index.json'):
        (tmp_path / 'scratch' / 'out' / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / 'scratch' / 'out' / rel).write_text('{}')
    write.commit(manifest)
    [(remote, files)] = uploads
    assert remote == 's3://bucket/data' and files[-1] == 'manifest.json'  # uploaded last: it marks the dataset complete
    assert sorted(files) == ['documents/code.parquet', 'manifest.json', 'tokenizer/tokenizer.json', 'train/code/index.json']


def test_shard_contract_knows_every_streaming_compression_and_hash():
    from streaming.base.compression import get_compressions
    from streaming.base.hashing import get_hash

    from reweigh.pipeline.shards import hash_hex, is_compression

    assert all(is_compression(name) for name in get_compressions())
    assert not any(is_compression(name) for name in ('lz4', 'zstd:x', 'snappy:1', ''))
    for algo in ('sha1', 'md5', 'xxh64', 'xxh3_64'):
        assert hash_hex(algo, b'reweigh') == get_hash(algo, b'reweigh')
    with pytest.raises(ValueError, match='unknown hash'):
        hash_hex('crc99', b'')


def test_lookup_documents_and_vectorised_domains(small_dataset):
    root, _ = small_dataset
    lookup = SampleLookup(root)
    sid = make_sample_id(1, 'train', 0)
    docs = lookup.documents(sid)
    assert docs and all(d['split'] == 'train' and d['source'].startswith('pydoc_data.topics:') for d in docs)
    first_doc = [doc for doc in iter_documents(default_corpus(SMALL['max_bytes_per_domain'])[1])][docs[0]['doc_id']]
    assert docs[0]['doc_id'] == 1 and first_doc.text.startswith(lookup.text(sid)[:40])  # doc 0 is in val
    ids = np.array([make_sample_id(d, s, 0) for d in (2, 0, 1) for s in ('train', 'val')])
    assert lookup.domain_names(ids).tolist() == ['boilerplate'] * 2 + ['code'] * 2 + ['docs'] * 2
    with pytest.raises(KeyError, match='names no domain'):
        lookup.domain_names([make_sample_id(7, 'train', 0)])
    with pytest.raises(KeyError, match='only'):
        lookup.text(make_sample_id(0, 'val', 10**9))


def test_rerun_is_skipped_and_other_settings_need_overwrite(tmp_path, capsys):
    out = tmp_path / 'ds'
    kwargs = dict(max_bytes_per_domain=8000, max_doc_chars=2000, vocab_size=300, seq_len=32, progress=False)
    from reweigh.pipeline import prepare_default_corpus

    first = prepare_default_corpus(out, **kwargs)
    mtime = (out / 'manifest.json').stat().st_mtime_ns
    again = prepare_default_corpus(out, **kwargs)
    assert again.skipped and not first.skipped and again.manifest.fingerprint == first.manifest.fingerprint
    assert (out / 'manifest.json').stat().st_mtime_ns == mtime
    assert 'nothing to do' in capsys.readouterr().err
    with pytest.raises(ValueError, match='different dataset.*--overwrite'):
        prepare_default_corpus(out, **{**kwargs, 'seq_len': 16})
    third = prepare_default_corpus(out, **{**kwargs, 'seq_len': 16}, overwrite=True)
    assert read_manifest(out).seq_len == 16 and not third.skipped
    (out / 'manifest.json').unlink()  # as if a run had died before finishing
    with pytest.raises(ValueError, match='incomplete'):
        prepare_default_corpus(out, **kwargs)


def test_local_text_jsonl_parquet_and_datasets_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    (src / 'a.txt').write_text('alpha document ' * 20)
    (src / 'sub' / 'b.md').write_text('beta document ' * 20)
    (src / '.hidden').write_text('never read')
    (src / 'bin.dat').write_bytes(b'\xff\xfe\x00\x81')
    rows = [{'text': f'json row {i} ' * 10, 'id': i} for i in range(5)]
    (tmp_path / 'rows.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    pq.write_table(pa.table({'body': [f'parquet row {i} ' * 10 for i in range(4)]}), tmp_path / 'p.parquet')
    (tmp_path / 'domains.yaml').write_text(
        'domains:\n  table: {path: p.parquet, text_field: body}\n  hub: {hf: json, data_files: rows.jsonl}\n')
    domains = [parse_domain_arg(f'files={src}'), parse_domain_arg(f'lines={tmp_path / "rows.jsonl"}')]
    domains += load_domains_file(tmp_path / 'domains.yaml')
    assert [(d.name, d.kind) for d in domains] == [('files', 'path'), ('lines', 'path'), ('table', 'path'), ('hub', 'hf')]
    assert [d.source.rsplit('/', 1)[-1] for d in iter_documents(domains[0])] == ['a.txt', 'b.md']

    result = prepare_dataset(domains, tmp_path / 'out', vocab_size=300, seq_len=16, val_fraction=0.5, progress=False)
    m = result.manifest
    assert [d.documents['train'] + d.documents['val'] for d in m.domains] == [2, 5, 4, 5]
    lookup = SampleLookup(tmp_path / 'out')
    hub = m.domain('hub')
    text = ''.join(lookup.text(make_sample_id(hub.index, 'train', i)) for i in range(hub.sequences['train']))
    eos = lookup.tokenizer.eos_token
    assert text == ''.join(r['text'] + eos for i, r in enumerate(rows) if i % 2 == 1)
    assert lookup.documents(make_sample_id(hub.index, 'val', 0))[0]['source'].startswith('hf:json[train]#0')


def test_given_tokenizer_is_used_and_stored(tmp_path, small_dataset):
    root, _ = small_dataset
    corpus = tmp_path / 'c.jsonl'
    corpus.write_text(''.join(json.dumps({'text': f'doc {i} about streaming'}) + '\n' for i in range(6)))
    result = prepare_dataset([parse_domain_arg(f'd={corpus}')], tmp_path / 'out', tokenizer=str(root / 'tokenizer'),
                             seq_len=8, val_fraction=0.5, progress=False)
    assert result.manifest.tokenizer['source'] == str(root / 'tokenizer')
    assert (tmp_path / 'out' / 'tokenizer' / 'tokenizer.json').read_text() == (root / 'tokenizer' / 'tokenizer.json').read_text()


@pytest.mark.parametrize('make_domain, error, match', [
    (lambda p: parse_domain_arg(f'gone={p / "missing.jsonl"}'), FileNotFoundError, "'gone'.*does not exist"),
    (lambda p: DomainSpec('void', 'path', str(_write(p / 'empty', {'a.txt': '  \n', 'b.txt': ''}))), ValueError,
     "domain 'void' is empty"),
    (lambda p: DomainSpec('one', 'path', str(_write(p / 'one', {'a.txt': 'only one'}))), ValueError,
     "'one' has a single document"),
    (lambda p: DomainSpec('bad', 'path', str(_write(p / 'bad', {'x.jsonl': '{"text": "ok"}\n{oops\n'}))), ValueError,
     r"x.jsonl:2 is not valid JSON"),
    (lambda p: DomainSpec('nofield', 'path', str(_write(p / 'nf', {'x.jsonl': '{"body": "ok"}\n'}))), ValueError,
     "has no field 'text'"),
    (lambda p: DomainSpec('binary', 'path', str(_write(p / 'bin', {'x.txt': b'\xff\xfe\x81'}) / 'x.txt')), ValueError,
     'is not UTF-8'),
])
def test_bad_inputs_give_clear_errors_and_leave_no_output(tmp_path, make_domain, error, match):
    ok = DomainSpec('ok', 'path', str(_write(tmp_path / 'ok', {'a.txt': 'first ' * 9, 'b.txt': 'second ' * 9})))
    out = tmp_path / 'out'
    with pytest.raises(error, match=match):
        prepare_dataset([ok, make_domain(tmp_path)], out, vocab_size=280, seq_len=8, progress=False)
    assert not out.exists()


def test_unknown_tokenizer_fails_before_reading(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import transformers.utils.hub

    # Offline mode, as HF_HUB_OFFLINE=1 at start-up would give: no minute of network retries here.
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(transformers.utils.hub, '_is_offline_mode', True)
    ok = DomainSpec('ok', 'path', str(_write(tmp_path / 'ok', {'a.txt': 'first', 'b.txt': 'second'})))
    with pytest.raises(ValueError, match="unknown tokenizer 'no-such-org/no-such-tokenizer'"):
        prepare_dataset([ok], tmp_path / 'out', tokenizer='no-such-org/no-such-tokenizer', progress=False)
    with pytest.raises(ValueError, match='no such local folder'):
        prepare_dataset([ok], tmp_path / 'out', tokenizer=str(tmp_path / 'nope'), progress=False)


def test_cli_prepare(tmp_path, capsys):
    src = _write(tmp_path / 'src', {f'{i}.txt': f'text number {i} ' * 30 for i in range(4)})
    out = tmp_path / 'out'
    argv = ['prepare', '--domain', f'notes={src}', '--out', str(out), '--vocab-size', '300', '--seq-len', '32',
            '--val-fraction', '0.5', '--no-progress']
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert 'tokens/s' in printed and '\nnotes\t0\t' in printed
    assert main(argv) == 0 and 'nothing to do' in capsys.readouterr().err
    assert main(argv[:-1] + ['--seq-len', '16', '--no-progress']) == 2
    assert 'already holds a different dataset' in capsys.readouterr().err
    assert main(['prepare', '--domain', f'x={tmp_path / "missing"}', '--out', str(tmp_path / 'o2')]) == 2
    assert "input '" in capsys.readouterr().err and not (tmp_path / 'o2').exists()
    shutil.rmtree(out)


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder
