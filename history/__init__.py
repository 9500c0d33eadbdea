"""The per-sample loss history, end to end: its format, the writer thread and the recorder every trainer uses.

* :mod:`reweigh.history.format`: folder layout, part names, columns, metadata, listing, truncation (no torch).
* :mod:`reweigh.history.writer`: the background thread that turns queued chunks into Parquet parts.
* :mod:`reweigh.history.recorder`: :class:`~reweigh.history.recorder.HistoryRecorder`, which takes the reweighting
  core's microbatch records (and mirrors parts to a bucket).

Training (the Composer callback, the Hugging Face trainer) and analysis (``reweigh analyze``, ``compare``,
``curate``) both depend on this package; it depends on neither. This module imports the format only, so that
analysis stays free of torch.

Example:
    >>> from reweigh.history import HISTORY_SCHEMA, part_name
    >>> part_name(0, 99), HISTORY_SCHEMA.names[:4]
    ('part-000000000-000000099.parquet', ['step', 'microbatch', 'rank', 'sample_id'])
"""

from reweigh.history.format import (
    FLOAT_COLUMNS,
    HISTORY_SCHEMA,
    INT_COLUMNS,
    METADATA_KEY,
    Part,
    encode_metadata,
    is_readable,
    list_parts,
    parse_part_name,
    part_name,
    part_rows,
    rank_folder,
    read_metadata,
    truncate_history,
    write_part,
)

__all__ = [
    'FLOAT_COLUMNS',
    'HISTORY_SCHEMA',
    'INT_COLUMNS',
    'METADATA_KEY',
    'Part',
    'encode_metadata',
    'is_readable',
    'part_rows',
    'list_parts',
    'parse_part_name',
    'part_name',
    'rank_folder',
    'read_metadata',
    'truncate_history',
    'write_part',
]
