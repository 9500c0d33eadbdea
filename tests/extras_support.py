"""Tests and extras: the one rule for a test that reaches an extra this environment lacks (skip it, naming the
extra), and a fresh interpreter in which some packages cannot be imported (as where an extra is not installed)."""

from __future__ import annotations

import textwrap

import pytest

from reweigh.integrations.extras import EXTRAS, missing_modules

MISSING = {module: extra for extra in EXTRAS for module in missing_modules(extra)}
"""The top-level modules of the extras not installed here, and their extra."""


def skip_if_missing_extra(error: ModuleNotFoundError, what: str) -> None:
    """Skip the running test if ``error`` is an extra's module that this environment lacks; otherwise return (the
    caller re-raises)."""
    top = (error.name or '').split('.')[0]
    if top in MISSING:
        pytest.skip(f'{what} needs reweigh[{MISSING[top]}] ({top} is not installed here)')


def blocking(modules: tuple[str, ...], code: str) -> str:
    """``code`` (a script, dedented) preceded by an import hook under which ``modules`` and their submodules raise
    ``ModuleNotFoundError``, as if they were not installed; run it with ``python -c``."""
    return textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {modules!r}:
                    raise ModuleNotFoundError(f'No module named {{name!r}} (blocked)', name=name)

        sys.meta_path.insert(0, Block())
    """) + textwrap.dedent(code)
