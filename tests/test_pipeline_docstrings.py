"""The examples in reweigh.pipeline's docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import reweigh.pipeline

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(reweigh.pipeline.__path__, prefix='reweigh.pipeline.'))


@pytest.mark.usefixtures('streaming_shm')
@pytest.mark.parametrize('name', MODULES + ['reweigh.pipeline'])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f'{name} has no docstring example'
    assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
