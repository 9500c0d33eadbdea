"""Every Python example in the README runs as written."""

import re
from pathlib import Path

import pytest
from test_analysis import synthetic_history

README = Path(__file__).resolve().parents[1] / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic_history(tmp_path / 'runs' / 'tiny-cpu' / 'history')  # what the Quickstart's run leaves
    exec(compile(BLOCKS[index], f'README.md[python block {index}]', 'exec'), {'__name__': '__readme__'})
