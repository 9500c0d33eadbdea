"""The Spark session of the ``spark`` engine (``reweigh prepare --engine spark``, ``reweigh curate --engine spark``).

pyspark is an optional extra (``pip install 'reweigh[spark]'``) and needs a Java 17+ runtime; both are
checked here, with a one-line error that says what to install. Inside a running Spark application (a
notebook, ``spark-submit``) the active session is used as it is; otherwise one is started on ``master``
(default ``local[*]``: every core of this machine). Its executors run this Python (``PYSPARK_PYTHON``
defaults to the running interpreter), so on a cluster reweigh must be installed on every executor.

Example:
    >>> spark = spark_session('local[2]')  # doctest: +SKIP
    >>> spark.sparkContext.parallelize(range(4), 2).map(lambda x: x * x).sum()  # doctest: +SKIP
    14
    >>> SPARK_EXTRA  # what the one-line error says to run when pyspark is missing
    "pip install 'reweigh[spark]'"
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

__all__ = ['SPARK_EXTRA', 'spark_session']

SPARK_EXTRA = "pip install 'reweigh[spark]'"
"""How to install what the spark engine needs."""

_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
"""
"""Spark's log configuration here: errors only (its default prints a screen of warnings at start)."""


def spark_session(master: str | None = None, *, progress: bool = False, app_name: str = 'reweigh') -> Any:
    """The active ``SparkSession``, or a new one on ``master``.

    Args:
        master: Spark master URL (``local[4]``, ``spark://host:7077``, ``yarn``, ``k8s://...``). Default:
            ``local[*]``. Ignored (with a warning) when a session is already active.
        progress: Show Spark's console progress bar (stages and tasks) on stderr.
        app_name: Application name shown in Spark's UI and logs.

    Returns:
        pyspark.sql.SparkSession: The session.

    Raises:
        ValueError: If pyspark is not installed, no Java runtime is found, or Spark cannot start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ValueError(f'the spark engine needs pyspark: {SPARK_EXTRA} (and a Java 17+ runtime)') from None
    active = SparkSession.getActiveSession()
    if active is not None:
        if master and active.sparkContext.master != master:
            print(f'reweigh: using the active Spark session on {active.sparkContext.master}, not {master}',
                  file=sys.stderr)
        return active
    java_home = os.environ.get('JAVA_HOME')
    if not (java_home and os.path.exists(os.path.join(java_home, 'bin', 'java'))) and not shutil.which('java'):
        raise ValueError('the spark engine needs a Java runtime (17 or newer): install one (e.g. apt-get install '
                         'openjdk-17-jre-headless) or set JAVA_HOME')
    os.environ.setdefault('PYSPARK_PYTHON', sys.executable)
    with tempfile.NamedTemporaryFile('w', prefix='reweigh-log4j2-', suffix='.properties', delete=False) as f:
        f.write(_LOG4J)
    builder = (SparkSession.builder.appName(app_name).master(master or 'local[*]')
               .config('spark.ui.showConsoleProgress', 'true' if progress else 'false')
               .config('spark.ui.enabled', 'false')
               .config('spark.driver.extraJavaOptions', f'-Dlog4j2.configurationFile=file:{f.name}'))
    try:
        with warnings.catch_warnings():  # pyspark warns that it is not tested with pandas 3; reweigh does not use pandas
            warnings.simplefilter('ignore', FutureWarning)
            return builder.getOrCreate()
    except Exception as e:  # pyspark raises PySparkRuntimeError (JAVA_GATEWAY_EXITED), Py4JError, ...
        raise ValueError(f'cannot start Spark on {master or "local[*]"} (is a Java 17+ runtime installed?): '
                         f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from e
    finally:
        os.remove(f.name)
