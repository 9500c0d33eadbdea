"""The optional dependency groups (pyproject.toml's extras) and the one-line error when one is missing.

The base install holds the core, the fused per-sample loss, the history and its analysis; each trainer stack is an
extra. A command or adapter that needs one calls :func:`require` before importing it, so that a missing extra is
one line naming the ``pip install`` to run, not an ``ImportError`` traceback from deep inside.

Example:
    >>> from reweigh.integrations.extras import EXTRAS, missing_modules
    >>> sorted(EXTRAS)
    ['composer', 'explore', 'hf', 'olmo-core', 'torchtitan']
    >>> missing_modules('hf') in ([], ['accelerate'], ['transformers'], ['transformers', 'accelerate'])
    True
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple


class Extra(NamedTuple):
    """One extra: the modules whose absence means it is not installed, and what it is for."""

    modules: tuple[str, ...]
    what: str


EXTRAS = {
    'composer': Extra(('composer', 'streaming', 'transformers', 'omegaconf', 'datasets'),
                      'Composer, Streaming and transformers < 5'),
    'explore': Extra(('starlette', 'uvicorn', 'plotly'), "the explorer's web app"),
    'hf': Extra(('transformers', 'accelerate'), "the Hugging Face Trainer"),
    'olmo-core': Extra(('olmo_core',), 'OLMo-core'),
    'torchtitan': Extra(('torchtitan',), 'torchtitan'),
}
"""Each extra of pyproject.toml that a command or adapter checks for, by name."""


class MissingExtra(ValueError):
    """An extra that the command or adapter needs is not installed (a user error: the message says what to run)."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (looked up without importing them)."""
    return [module for module in EXTRAS[extra].modules if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses the name
        return False


def require(extra: str, user: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` is installed.

    Args:
        extra (str): A key of :data:`EXTRAS`.
        user (str): What needs it, for the message (``'reweigh train'``).

    Raises:
        MissingExtra: Naming the missing modules and the ``pip install 'reweigh[EXTRA]'`` to run.

    Example:
        >>> from reweigh.integrations.extras import MissingExtra, require
        >>> try:
        ...     require('torchtitan', 'this example')
        ... except MissingExtra as e:
        ...     assert "pip install 'reweigh[torchtitan]'" in str(e)
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(f'{user} needs {EXTRAS[extra].what} (not installed: {", ".join(missing)}): '
                           f"pip install 'reweigh[{extra}]'")
