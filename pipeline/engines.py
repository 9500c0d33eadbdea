"""Where ``prepare_dataset`` and ``curate_dataset`` run: this process (``local``) or a Spark cluster (``spark``).

Each of them checks its ``engine`` argument first (:func:`check_engine`) and, once it knows there is work
to do, starts the engine (:func:`start_engine`: a ``SparkSession`` for ``spark``, nothing for ``local``),
before it claims its output, so that a missing pyspark or Java leaves the output as it was.

Example:
    >>> check_engine('gpu')
    Traceback (most recent call last):
    ...
    ValueError: engine must be one of ('local', 'spark'), got 'gpu'
    >>> start_engine('local', None, progress=False, app_name='reweigh prepare') is None
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ['ENGINES', 'check_engine', 'start_engine']

ENGINES = ('local', 'spark')
"""Where the work runs: this process, or a Spark cluster."""


def check_engine(engine: str) -> None:
    """Check that ``engine`` is one of :data:`ENGINES`.

    Raises:
        ValueError: Naming the engines there are.

    Example:
        >>> check_engine('spark')
    """
    if engine not in ENGINES:
        raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}')


def start_engine(engine: str, spark_master: str | None, *, progress: bool, app_name: str) -> Any | None:
    """The ``SparkSession`` for ``engine='spark'`` (:func:`~reweigh.pipeline.spark_session.spark_session`), else None.

    Raises:
        ValueError: For ``'spark'`` without pyspark or Java (a one-line message saying what to install).

    Example:
        >>> start_engine('local', 'spark://ignored:7077', progress=True, app_name='reweigh curate') is None
        True
    """
    if engine != 'spark':
        return None
    from reweigh.pipeline.spark_session import spark_session

    return spark_session(spark_master, progress=progress, app_name=app_name)
