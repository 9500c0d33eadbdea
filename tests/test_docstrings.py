"""The examples in the public docstrings of every package but reweigh.pipeline (tested with its data) run as written."""

import doctest
import importlib
import pkgutil

import pytest

import reweigh.algorithms
import reweigh.analysis
import reweigh.callbacks
import reweigh.cli
import reweigh.history
import reweigh.integrations
import reweigh.io
import reweigh.models
import reweigh.safety
import reweigh.train

PACKAGES = (reweigh.algorithms, reweigh.analysis, reweigh.callbacks, reweigh.cli, reweigh.history, reweigh.integrations,
            reweigh.io, reweigh.models, reweigh.safety, reweigh.train)
MODULES = sorted(
    name for package in PACKAGES for _, name, _ in pkgutil.iter_modules(package.__path__, prefix=f'{package.__name__}.')
) + [package.__name__ for package in PACKAGES if package is not reweigh.cli]


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
