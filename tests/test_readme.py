"""Every Python example in the README and in docs/scale.md runs as written (docs/pipeline.md's need a bucket)."""

import re
from pathlib import Path

import pytest
from extras_support import skip_if_missing_extra
from test_analysis import synthetic_history

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
DOC_BLOCKS = [
    (doc.name, block) for doc in [ROOT / 'docs' / 'scale.md']
    for block in re.findall(r'```python\n(.*?)```', doc.read_text(), flags=re.S)
]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic_history(tmp_path / 'runs' / 'tiny-cpu' / 'history')  # what the Quickstart's run leaves
    _run(BLOCKS[index], f'README.md[python block {index}]')


@pytest.mark.parametrize(('doc', 'block'), DOC_BLOCKS, ids=[f'{d}-{i}' for i, (d, _) in enumerate(DOC_BLOCKS)])
def test_docs_example_runs(doc, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(block, f'docs/{doc}')


def _run(block: str, name: str) -> None:
    """Run one example; one for a trainer whose extra this environment lacks is skipped (it runs where it is)."""
    try:
        exec(compile(block, name, 'exec'), {'__name__': '__readme__'})
    except ModuleNotFoundError as e:
        skip_if_missing_extra(e, name)
        raise
