"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import reweigh.algorithms

MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(reweigh.algorithms.__path__, prefix='reweigh.algorithms.')
) + ['reweigh.algorithms']


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
