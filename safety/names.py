"""The one rule for names that become a path component or an object key: they cannot leave their root.

A run name becomes ``runs/{run_name}/...``; a domain name becomes ``{split}/{domain}/`` and
``documents/{domain}.parquet`` inside a dataset, locally and in a bucket; a file named in a manifest or a
shard index is joined onto a cache folder. Such a name is a single path component made of ASCII letters,
digits, ``_``, ``-`` and ``.``, starting with a letter or digit (so never ``.``, ``..`` or a hidden file),
at most 128 characters: no separator, no absolute path, no drive, no control character, no space.

Example:
    >>> check_name('domain', 'code.v2')
    'code.v2'
    >>> check_name('domain', '../etc')
    Traceback (most recent call last):
    ...
    ValueError: domain '../etc' may not become a path: use 1-128 ASCII letters, digits, "_", "-", "." ...
    >>> check_relative_path('tokenizer file', 'tokenizer/vocab.json')
    'tokenizer/vocab.json'
"""

from __future__ import annotations

import re

__all__ = ['NAME_PATTERN', 'check_name', 'check_relative_path', 'is_safe_name']

NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,127}')
"""A safe name: one path component, ASCII, no leading dot, at most 128 characters."""

_RULE = ('use 1-128 ASCII letters, digits, "_", "-", "." starting with a letter or digit '
         '(no "/", "\\", "..", spaces or control characters)')


def is_safe_name(value: object) -> bool:
    """Whether ``value`` is a string that :func:`check_name` accepts."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def check_name(what: str, value: object) -> str:
    """Return ``value`` if it is a safe single path component, else raise naming ``what``.

    Args:
        what: What the value is, for the message (a config key, ``'domain'``, ...).
        value: The candidate name.

    Raises:
        ValueError: ``"{what} {value!r} may not become a path: ..."``.
    """
    if not is_safe_name(value):
        raise ValueError(f'{what} {value!r} may not become a path: {_RULE}')
    return value  # type: ignore[return-value]


def check_relative_path(what: str, value: object) -> str:
    """Return ``value`` if it is a relative ``/``-separated path of safe names, else raise naming ``what``.

    Raises:
        ValueError: For an empty or absolute path, ``..``, a backslash, or any unsafe component.
    """
    if not isinstance(value, str) or not value or not all(is_safe_name(part) for part in value.split('/')):
        raise ValueError(f'{what} {value!r} may not become a path: a relative path of names that each {_RULE[4:]}')
    return value
