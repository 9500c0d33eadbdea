"""A run folder of ``reweigh train``: the one place that names its files, for every reader and writer.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (evaluations and training loss per
step), ``summary.json`` (written last: the run finished), ``history/`` (the per-sample loss history),
``checkpoints/`` (the default ``save_folder``) and, for a run of ``reweigh sweep``, ``train.log``. The names that
the readers in :mod:`reweigh.analysis.runs` need are defined there; :class:`RunFolder` joins them onto a local
folder or an object-store URI. This module imports neither torch nor Composer.

Example:
    >>> from reweigh.train.run_folder import RunFolder
    >>> RunFolder('runs/tiny-cpu').history, RunFolder('s3://bucket/runs/tiny-cpu/').summary_file
    ('runs/tiny-cpu/history', 's3://bucket/runs/tiny-cpu/summary.json')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reweigh.analysis.runs import CONFIG_FILE, HISTORY_FOLDER, METRICS_FILE, SUMMARY_FILE
from reweigh.io.arrow import read_text
from reweigh.io.local import write_atomically
from reweigh.io.uri import is_remote, join

__all__ = ['ANALYSIS_FOLDER', 'CHECKPOINTS_FOLDER', 'LEASE_FILE', 'SUMMARY_PATHS', 'TRAIN_LOG', 'RunFolder']

CHECKPOINTS_FOLDER = 'checkpoints'
"""Where checkpoints go when the config sets no ``save_folder`` (and Composer's local folder for a remote one)."""
TRAIN_LOG = 'train.log'
"""The output of a run that ``reweigh sweep`` started."""
ANALYSIS_FOLDER = 'analysis'
"""What ``reweigh analyze`` writes (and ``reweigh explore`` caches) for a run, by default."""
LEASE_FILE = 'lease.json'
"""Who trains the run now (:mod:`reweigh.train.lease`); present only while a launch holds it."""
SUMMARY_PATHS = ('run_dir', 'save_folder', 'history', 'dataset', 'dataset_cache')
"""The keys of ``summary.json`` that hold paths. A path inside the run folder is written relative to it (``'.'`` for
the folder itself), one outside it as an absolute path or a URI; readers get them back resolved against the folder
where it is now, so a run folder that was moved, copied or downloaded reads the same from any directory."""
_RELATIVE = ('paths', 'relative to the run folder')
"""The mark of a summary written so; one without it (written before) holds paths as ``reweigh train`` was given them."""


class RunFolder:
    """The files of one run folder, local or in object storage (``s3://``, ``gs://``, ...).

    The paths are strings: joined with :mod:`pathlib` for a local folder, with ``/`` for a URI. Writing
    (:meth:`write_config`, :meth:`write_summary`) is for local folders; the trainer uploads the written files.

    Args:
        root: The folder: a local path or an object-store URI.

    Example:
        >>> import tempfile
        >>> from reweigh.train.run_folder import RunFolder
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.write_config('run_name: demo\\n')
        >>> folder.finished('run_name: demo\\n')
        False
        >>> folder.write_summary({'run_name': 'demo', 'history': None})
        >>> folder.finished('run_name: demo\\n'), folder.finished('run_name: other\\n'), folder.read_summary()['run_name']
        (True, False, 'demo')
    """

    def __init__(self, root: str | os.PathLike) -> None:
        text = os.fspath(root)
        self._given = text  # for messages, as the user wrote it
        self.remote = is_remote(text)
        """Whether the folder is an object-store URI."""
        self.root = text.rstrip('/') if self.remote else str(Path(text))
        """The folder, normalised (no trailing ``/``)."""

    def __repr__(self) -> str:
        return f'RunFolder({self.root!r})'

    def _file(self, name: str) -> str:
        return join(self.root, name)

    @property
    def config(self) -> str:
        """``config.yaml``: the resolved training config."""
        return self._file(CONFIG_FILE)

    @property
    def metrics(self) -> str:
        """``metrics.jsonl``: evaluations and training metrics per step."""
        return self._file(METRICS_FILE)

    @property
    def summary_file(self) -> str:
        """``summary.json``: paths, steps and final evaluation metrics, written when the run ends."""
        return self._file(SUMMARY_FILE)

    @property
    def history(self) -> str:
        """``history/``: the per-sample loss history (the default ``history.folder``)."""
        return self._file(HISTORY_FOLDER)

    @property
    def checkpoints(self) -> str:
        """``checkpoints/``: the default ``save_folder``."""
        return self._file(CHECKPOINTS_FOLDER)

    @property
    def analysis(self) -> Path:
        """``analysis/``: the local folder of the run's analysis, inside a local run folder and in the working
        directory for one in object storage (whose files are not written there)."""
        return Path(ANALYSIS_FOLDER) if self.remote else Path(self.root) / ANALYSIS_FOLDER

    @property
    def lease(self) -> str:
        """``lease.json``: the launch that trains the run now (:class:`~reweigh.train.lease.RunLease`)."""
        return self._file(LEASE_FILE)

    @property
    def train_log(self) -> str:
        """``train.log``: the output of a run of ``reweigh sweep``."""
        return self._file(TRAIN_LOG)

    def write_config(self, text: str) -> None:
        """Create the (local) folder and write ``config.yaml`` atomically."""
        Path(self.root).mkdir(parents=True, exist_ok=True)
        write_atomically(self.config, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically (in a local folder): the run has finished. Its :data:`SUMMARY_PATHS` are
        written relative to the folder where they lie inside it, else absolute (or as the URI they are)."""
        root = Path(self.root).resolve()
        written = dict(summary)
        for key in SUMMARY_PATHS:
            value = written.get(key)
            if isinstance(value, str) and not is_remote(value):
                path = Path(value).resolve()
                written[key] = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        written[_RELATIVE[0]] = _RELATIVE[1]
        write_atomically(self.summary_file, json.dumps(written, indent=2))

    def read_summary(self) -> dict[str, Any]:
        """The run's ``summary.json``, or ``{}`` if it has none, with its :data:`SUMMARY_PATHS` resolved against this
        folder (local or remote) wherever it is now.

        Raises:
            ValueError: If it cannot be read or is not JSON.

        Example:
            >>> import os, tempfile
            >>> from reweigh.train.run_folder import RunFolder
            >>> runs = tempfile.mkdtemp()
            >>> RunFolder(f'{runs}/a').write_config('run_name: a\\n')
            >>> RunFolder(f'{runs}/a').write_summary({'history': f'{runs}/a/history', 'dataset': 's3://b/data'})
            >>> os.rename(f'{runs}/a', f'{runs}/moved')
            >>> summary = RunFolder(f'{runs}/moved').read_summary()
            >>> summary['history'] == os.path.join(runs, 'moved', 'history'), summary['dataset']
            (True, 's3://b/data')
        """
        return self._read_summary()[0]

    def _read_summary(self) -> tuple[dict[str, Any], bool]:
        """The summary, resolved, and whether its paths were written relative to the folder (by this reweigh)."""
        try:
            text = read_text(self.summary_file, missing_ok=True)
            summary = json.loads(text) if text is not None else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f'{self.summary_file} cannot be read: {e}') from e
        relative = summary.pop(_RELATIVE[0], None) == _RELATIVE[1]
        if relative:
            for key in SUMMARY_PATHS:
                value = summary.get(key)
                if isinstance(value, str) and not is_remote(value) and not os.path.isabs(value):
                    summary[key] = self.root if value == '.' else join(self.root, *value.split('/'))
        return summary, relative

    def finished(self, config: str) -> bool:
        """Whether the (local) run ended (``summary.json``) with the config ``config`` (``config.yaml``'s text).

        Where the run folder lies (its ``run_dir``) is not compared: a sweep folder that was moved or copied, and run
        again with ``--out`` at its new place, is not trained again.

        Example:
            >>> import json, tempfile
            >>> from pathlib import Path
            >>> from reweigh.train.run_folder import RunFolder
            >>> folder = RunFolder(tempfile.mkdtemp())
            >>> folder.write_config('run_dir: /old/place/a\\nseed: 17\\n')
            >>> _ = Path(folder.summary_file).write_text(json.dumps({'steps': 10}))
            >>> folder.finished('run_dir: /new/place/a\\nseed: 17\\n'), folder.finished('run_dir: /old/place/a\\nseed: 18\\n')
            (True, False)
        """
        written = Path(self.config)
        if not (Path(self.summary_file).is_file() and written.is_file()):
            return False
        return _placeless(written.read_text()) == _placeless(config)

    def locate_history(self) -> tuple[str, dict[str, Any]]:
        """The loss history and the summary (``{}`` if none) of this folder: a run folder, a history folder, or a URI.

        A local run folder's history is the one its ``summary.json`` names (wherever the folder is now), else its
        ``history/`` if there is one, else the folder itself (a history folder). A ``summary.json`` of an older
        reweigh, whose paths are relative to where training ran, is not followed where the folder has its own
        ``history/`` (a copy would otherwise read the original's). A URI is taken as a run folder unless it ends in
        ``/history``; its summary is not read.

        Raises:
            ValueError: If a local folder does not exist or its ``summary.json`` cannot be read.

        Example:
            >>> from reweigh.train.run_folder import RunFolder
            >>> RunFolder('gs://bucket/runs/x').locate_history(), RunFolder('gs://bucket/runs/x/history/').locate_history()
            (('gs://bucket/runs/x/history', {}), ('gs://bucket/runs/x/history', {}))
        """
        if self.remote:
            return (self.root if self.root.endswith(f'/{HISTORY_FOLDER}') else self.history), {}
        if not Path(self.root).exists():
            raise ValueError(f'{self._given!r} does not exist.')
        summary, relative = self._read_summary()
        own = Path(self.history).is_dir()
        if summary.get('history') and (relative or not own):
            return summary['history'], summary
        return self.history if own else self.root, summary


def _placeless(config: str) -> Any:
    """A config's YAML without its ``run_dir`` (its text where it is not a mapping)."""
    import yaml

    try:
        parsed = yaml.safe_load(config)
    except yaml.YAMLError:
        return config
    if not isinstance(parsed, dict):
        return config
    parsed.pop('run_dir', None)
    return parsed
