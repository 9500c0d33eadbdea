"""The examples in the public docstrings (reweigh.algorithms, reweigh.cli, reweigh.safety) run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import reweigh.algorithms
import reweigh.cli
import reweigh.safety

MODULES = sorted(
    name for package in (reweigh.algorithms, reweigh.cli, reweigh.safety)
    for _, name, _ in pkgutil.iter_modules(package.__path__, prefix=f'{package.__name__}.')
) + ['reweigh.algorithms', 'reweigh.safety']


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
