"""The run library of ``reweigh train``: config schema and loading, the run folder, the Composer trainer, the run.

:mod:`~reweigh.train.schema` (the config dataclasses, and which keys make an arm) and
:mod:`~reweigh.train.run_folder` (:class:`RunFolder`: a run folder's files, for readers and writers) import
neither torch nor Composer; :mod:`~reweigh.train.config` validates a config (:func:`load_config`),
:mod:`~reweigh.train.trainer` builds the trainer (:func:`build_trainer`) and runs it (:func:`train`), with
:mod:`~reweigh.train.builders` and :mod:`~reweigh.train.data` making its parts. The package imports nothing
until a name is used.

Example:
    >>> from reweigh.train import RunFolder, not_arm_keys
    >>> RunFolder('runs/tiny-cpu').summary_file, 'run_name' in not_arm_keys()
    ('runs/tiny-cpu/summary.json', True)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'MISSING': 'schema', 'TrainConfig': 'schema', 'not_arm_keys': 'schema',
    'ConfigError': 'config', 'load_config': 'config', 'validate_uri': 'config',
    'RunFolder': 'run_folder',
    'BuiltTrainer': 'trainer', 'Placement': 'trainer', 'build_trainer': 'trainer', 'place': 'trainer', 'train': 'trainer',
}
"""Each public name and the submodule that defines it, imported on first use."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
