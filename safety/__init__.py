"""Data from storage stays data: restricted checkpoint loading and the rule for names that become paths.

Checkpoints (:mod:`reweigh.safety.checkpoints`) are loaded without running code from them, and only those
their ``latest`` pointer vouches for (Composer's checkpoint names are defined there too); names that
become path components or object keys (:mod:`reweigh.safety.names`) cannot leave their root. Shard
indexes are checked against the reweigh MDS contract in :mod:`reweigh.pipeline.shards`.

Example:
    >>> from reweigh.safety import check_name
    >>> check_name('run_name', 'tiny-cpu')
    'tiny-cpu'
    >>> check_name('run_name', '../elsewhere')
    Traceback (most recent call last):
    ...
    ValueError: ...
"""

from typing import Any

from reweigh.safety.names import NAME_PATTERN, check_name, check_relative_path, is_safe_name

_CHECKPOINT_NAMES = ('CHECKPOINT_ALLOWED_GLOBALS', 'CHECKPOINT_NAME', 'UnsafeCheckpointError', 'latest_name', 'load_checkpoint',
                     'safe_checkpoint_loading', 'set_aside_interrupted_checkpoints')

__all__ = [
    'CHECKPOINT_ALLOWED_GLOBALS',
    'CHECKPOINT_NAME',
    'NAME_PATTERN',
    'UnsafeCheckpointError',
    'check_name',
    'check_relative_path',
    'is_safe_name',
    'latest_name',
    'load_checkpoint',
    'safe_checkpoint_loading',
    'set_aside_interrupted_checkpoints',
]


def __getattr__(name: str) -> Any:
    """The checkpoint names load torch and Composer on first use, so that the name rule stays light."""
    if name in _CHECKPOINT_NAMES:
        from reweigh.safety import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
