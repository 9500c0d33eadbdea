"""The examples in the public docstrings of every package but reweigh.pipeline (tested with its data) run as written.

A module that needs an extra this environment lacks (Composer in the today environment, OLMo-core or torchtitan in
the Composer ones) is skipped here and tested in the environment that has it."""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest
from extras_support import skip_if_missing_extra

PACKAGES = ('algorithms', 'analysis', 'callbacks', 'cli', 'explore', 'history', 'integrations', 'io', 'models', 'safety',
            'train')
MODULES = sorted(
    name for package in PACKAGES
    for _, name, _ in pkgutil.iter_modules(importlib.util.find_spec(f'reweigh.{package}').submodule_search_locations,
                                           prefix=f'reweigh.{package}.')
) + [f'reweigh.{package}' for package in PACKAGES if package != 'cli']


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        skip_if_missing_extra(e, name)
        raise
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
