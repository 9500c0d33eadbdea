"""What ``reweigh explore`` shows, answered by DuckDB from one run's history and dataset; no web framework here.

:class:`Explorer` reads a run's loss history once into a DuckDB file beside the run's analysis
(``RUN/analysis/explore.duckdb``): the per-sample table and the tables of :func:`~reweigh.analysis.analyze_history`,
and every visit sorted by sample id. A later start opens that file at once, unless a part of the history changed
since. Each view is then a query of it:

* :meth:`Explorer.data_map`: every sample's mean loss against its loss variability (or its mean weight), as points
  where a region holds few enough samples, else as a grid of bins aggregated by DuckDB (so a 100M-row history is
  a few thousand cells, not a few million points);
* :meth:`Explorer.sample`: one sample's text (decoded from the shards, as :class:`~reweigh.pipeline.SampleLookup`
  does), domain, documents, and its loss and weight at every visit (from the history's parts, in place);
* :meth:`Explorer.domains`: per domain and step window, the mean loss and the share of the weight; the weight's
  quantiles per window;
* :meth:`Explorer.curation`: what ``reweigh curate`` rules would drop, per domain in samples and tokens, with
  examples and the exact command, by the same rule (:func:`~reweigh.analysis.curation.select`).

Every argument a view takes is a number, or one name of a fixed list: nothing a caller passes becomes SQL or a path.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> from reweigh.analysis import HISTORY_SCHEMA
    >>> from reweigh.explore.views import Explorer
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / 'history' / 'rank0').mkdir(parents=True)
    >>> rows = {'step': [0, 0, 1, 1], 'microbatch': [0] * 4, 'rank': [0] * 4, 'sample_id': [1, 2, 1, 2],
    ...         'domain': [0, 1, 0, 1], 'tokens': [8] * 4, 'mix': [-1] * 4, 'loss': [1.0, 3.0, 0.5, 3.0],
    ...         'weight': [0.5, 0.5, 0.25, 0.75], 'r': [1.0] * 4, 'active': [False, False, True, True]}
    >>> pq.write_table(pa.table(rows, schema=HISTORY_SCHEMA), run / 'history' / 'rank0' / 'part-000000000-000000001.parquet')
    >>> explorer = Explorer(run)
    >>> explorer.data_map()['kind'], explorer.sample(1)['trajectory']['rel_weight']
    ('points', [1.0, 0.5])
    >>> explorer.close()
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reweigh.analysis.curation import Rules, columns_needed, select
from reweigh.train.run_folder import ANALYSIS_FOLDER

__all__ = ['COLORS', 'MAP_AXES', 'Explorer', 'curate_command']

MAP_AXES = {'loss_std': 'loss std across visits', 'mean_rel_weight': 'mean weight (x uniform) after warm-up'}
"""The data map's y axes (its x axis is the mean loss across visits), by column of the per-sample table."""
COLORS = {'domain': 'domain', 'weight': 'mean_rel_weight', 'visits': 'visits'}
"""What the data map's colour may show, and the per-sample column it comes from."""
MAX_POINTS = 4000
"""A region of the data map with at most this many samples is drawn as points; a larger one as bins."""
MAX_BINS = 400
DEFAULT_BINS = 160
READ_MEMORY_LIMIT = '1GB'
"""DuckDB's memory limit while the views read the cache (building it uses ``memory_limit``)."""
CACHE_FILE = 'explore.duckdb'
CACHE_VERSION = 2
"""Bumped when what the cache holds changes (an older cache is then rebuilt)."""
EXAMPLES = 5
"""Dropped samples shown per domain in the curation panel."""


class Explorer:
    """One run's loss history and dataset, and the views of ``reweigh explore`` over them.

    Args:
        run (str | os.PathLike): A run folder, a history folder, or an object-store URI of one (as ``reweigh
            analyze`` and ``reweigh curate`` take).
        dataset (str, optional): The prepared dataset the run trained on. Default: the one its ``summary.json``
            names. Without one (or where it cannot be read) every view works but a sample's text, and the
            curation counts cover the samples the history saw.
        dataset_cache (str, optional): Local cache folder for a remote dataset.
        windows (int): Step windows of the over-time views. Default: ``50``.
        memory_limit (str): DuckDB's memory limit while the cache is built (work beyond it spills to disk).
            Default: ``'3GB'``.
        cache_dir (str | os.PathLike, optional): Where the cache file goes. Default: the run's analysis folder
            (``RUN/analysis``; ``./analysis`` for a run in object storage); a temporary folder where that cannot
            be written.
        max_points (int): A map region with at most this many samples is drawn as points. Default: ``4000``.
        on_build (Callable[[str], None], optional): Told, in words, when the cache is being built (the slow start).
        compare (Sequence[str | os.PathLike]): More run folders, whose validation curves :meth:`runs` sets beside
            this run's, grouped into arms as ``reweigh compare`` groups them.
        arm_names (dict[str, str], optional): Arm names by run path (``reweigh compare``'s ``ARM=RUN``); a run
            not named is grouped by its config.

    Raises:
        ValueError: If the run folder does not exist, or it holds no readable history.
    """

    def __init__(self, run: str | os.PathLike, *, dataset: str | None = None, dataset_cache: str | None = None,
                 windows: int = 50, memory_limit: str = '3GB', cache_dir: str | os.PathLike | None = None,
                 max_points: int = MAX_POINTS, on_build: Callable[[str], None] | None = None,
                 compare: Sequence[str | os.PathLike] = (), arm_names: dict[str, str] | None = None) -> None:
        import duckdb

        from reweigh.train.run_folder import RunFolder

        self.run = str(run)
        folder = RunFolder(self.run)
        self.history, summary = folder.locate_history()
        self.max_points = max_points
        self._tmp: tempfile.TemporaryDirectory | None = None
        if cache_dir is None:  # the run's analysis folder; for a local history folder given itself, one beside it
            given_history = not folder.remote and self.history == folder.root
            cache_dir = Path(self.history).parent / ANALYSIS_FOLDER if given_history else folder.analysis
        self.cache = Path(cache_dir) / CACHE_FILE
        """The DuckDB file holding what the views read (built once per history, rebuilt when a part changes)."""
        key = _history_key(self.history, windows)
        self.built = not _is_current(self.cache, key)
        """Whether this explorer built its cache (else it opened the one an earlier start built)."""
        if self.built:
            try:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                probe = self.cache.parent / f'.{CACHE_FILE}.{os.getpid()}.probe'
                probe.touch()
                probe.unlink()
            except OSError:  # a read-only run folder: a cache for this session only
                self._tmp = tempfile.TemporaryDirectory(prefix='reweigh-explore-')
                self.cache = Path(self._tmp.name) / CACHE_FILE
            if on_build is not None:
                on_build(f'building the explorer\'s cache {self.cache} (once per history)')
            _build_cache(self.cache, self.history, key, windows, memory_limit)
        # reading needs little working memory; a smaller limit keeps DuckDB's cache of the file small too
        self._con = duckdb.connect(str(self.cache), read_only=True, config={'memory_limit': READ_MEMORY_LIMIT})
        info = json.loads(self._query('SELECT info FROM meta').column('info')[0].as_py())
        self.rows: int = info['rows']
        self.steps: int = info['steps']
        self.first_active_step: int | None = info['first_active_step']
        self.missing: str | None = info['missing']
        """The unreadable parts left out, in words (``None`` if none)."""
        self.summary, self.over_time, self.quantiles = (self._query(f'SELECT * FROM {t}') for t in _ANALYSIS_TABLES)
        self.dataset = dataset or summary.get('dataset')
        self.lookup, self.text_unavailable = self._open_dataset(dataset_cache or summary.get('dataset_cache'))
        names = info['domains'] or (self.lookup and self.lookup.domain_names_by_index)
        domains = [row['domain'] for row in self.summary.to_pylist()]
        self.domain_names: list[str] = list(names or [f'domain {d}' for d in range(max(domains, default=-1) + 1)])
        self.compared = [self.run, *map(str, compare)]
        """The runs of :meth:`runs`: this one first."""
        self._arm_names = dict(arm_names or {})
        self._comparison: dict[str, Any] | None = None

    def _open_dataset(self, cache: str | None) -> tuple[Any, str | None]:
        """The dataset's :class:`SampleLookup`, or ``None`` and why the text is unavailable."""
        if not self.dataset:
            return None, 'the run names no dataset (pass --dataset ROOT)'
        try:
            from reweigh.pipeline import SampleLookup

            return SampleLookup(self.dataset, cache), None
        except (ImportError, OSError, ValueError, KeyError) as e:  # FileNotFoundError is an OSError
            return None, f'cannot read the dataset {self.dataset}: {str(e).splitlines()[0] if str(e) else type(e).__name__}'

    def close(self) -> None:
        """Close the database (and remove a cache made for this session only)."""
        self._con.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """``sql`` with bound ``params`` on a cursor of its own (the web server answers from several threads)."""
        return self._con.cursor().sql(sql, params=list(params)).to_arrow_table()

    # --- the views ------------------------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """The run at a glance: rows, steps, samples, each domain's summary, the data map's axes and extent."""
        extent = self._query(
            'SELECT count(*) AS samples, min(mean_loss), max(mean_loss), min(loss_std), max(loss_std), '
            'min(mean_rel_weight), max(mean_rel_weight) FROM samples').to_pylist()[0]
        values = list(extent.values())
        domains = [dict(row, name=self._name(row['domain'])) for row in self.summary.to_pylist()]
        return {
            'run': self.run, 'history': self.history, 'dataset': self.dataset, 'rows': self.rows,
            'steps': self.steps, 'samples': values[0], 'first_active_step': self.first_active_step, 'missing': self.missing,
            'domains': domains, 'domain_names': self.domain_names, 'text_unavailable': self.text_unavailable,
            'axes': MAP_AXES, 'colors': list(COLORS),
            'extent': {'mean_loss': values[1:3], 'loss_std': values[3:5], 'mean_rel_weight': values[5:7]},
        }

    def data_map(self, y: str = 'loss_std', color: str = 'domain', region: Sequence[float] | None = None,
                 domain: int | None = None, bins: int = DEFAULT_BINS, max_points: int | None = None) -> dict[str, Any]:
        """The samples in ``region`` (``x0, x1, y0, y1``; default: all) of domain ``domain`` (default: all).

        Returns ``{'kind': 'points', 'count', 'sample_id', 'x', 'y', 'domain', 'color'}`` where the region holds at
        most ``max_points`` (default: the explorer's) samples, else
        ``{'kind': 'bins', 'count', 'extent', 'bins', 'i', 'j', 'n', 'color'}``: the samples counted in a
        ``bins x bins`` grid over the extent (cell ``i`` along x, ``j`` along y), with the colour of a cell the
        majority domain, the mean weight or the mean visits of its samples. The whole map in bins comes from the
        cache (binned once, when it was built).

        Raises:
            ValueError: For an unknown ``y`` or ``color``, a region that is not 4 finite numbers in order, or
                ``bins`` outside ``[1, 400]``.
        """
        if region is None and domain is None and bins == DEFAULT_BINS:  # the whole map: binned when the cache was built
            stored = self._query('SELECT value FROM whole_maps WHERE y = ? AND color = ?', [y, color]).to_pylist()
            if stored and stored[0]['value'] is not None:
                whole = json.loads(stored[0]['value'])
                if whole['count'] > (self.max_points if max_points is None else max_points):
                    return whole
        return _data_map(self._query, y, color, region, domain, bins, self.max_points if max_points is None else max_points)

    def sample(self, sample_id: int) -> dict[str, Any]:
        """One sample: its per-sample statistics, text and documents (``None`` where the dataset is unavailable,
        with :attr:`text_unavailable` saying why), and its loss and weight relative to uniform at every visit.

        Raises:
            KeyError: If the history never saw ``sample_id``.
        """
        rows = self._query('SELECT * FROM samples WHERE sample_id = ?', [int(sample_id)]).to_pylist()
        if not rows:
            raise KeyError(f'the history has no sample {sample_id}')
        visits = self._query('SELECT step, loss, rel_weight, active FROM visits WHERE sample_id = ? ORDER BY step, microbatch',
                             [int(sample_id)])
        text, documents, unavailable = None, None, self.text_unavailable
        if self.lookup is not None:
            try:
                text = self.lookup.text(int(sample_id))
                documents = [{k: v for k, v in d.items() if k in ('doc_id', 'source', 'chars')}
                             for d in self.lookup.documents(int(sample_id))]
            except (KeyError, IndexError, OSError, ValueError) as e:
                unavailable = f'sample {sample_id} is not in {self.dataset}: {e}'
        row = rows[0]
        return {**row, 'domain_name': self._name(row['domain']), 'text': text, 'documents': documents,
                'text_unavailable': unavailable,
                'trajectory': {name: visits[name].to_pylist() for name in visits.column_names}}

    def domains(self) -> dict[str, Any]:
        """Per domain over the step windows: mean loss, mean weight relative to uniform and share of the weight
        (its rows times its mean weight, over all domains'); and the weight's quantiles per window."""
        over = self.over_time.to_pylist()
        totals: dict[int, float] = {}
        for row in over:
            if row['mean_rel_weight'] is not None:
                totals[row['window']] = totals.get(row['window'], 0.0) + row['rows'] * row['mean_rel_weight']
        curves: dict[str, dict[str, list]] = {}
        for row in over:
            curve = curves.setdefault(self._name(row['domain']), {'window': [], 'mean_loss': [], 'weight_share': []})
            curve['window'].append(row['window'])
            curve['mean_loss'].append(row['mean_loss'])
            total = totals.get(row['window'])
            curve['weight_share'].append(row['rows'] * row['mean_rel_weight'] / total if total else None)
        quantiles = self.quantiles
        return {'domains': curves, 'quantiles': {name: quantiles[name].to_pylist() for name in quantiles.column_names}}

    def curation(self, rules: Rules, out: str = 'CURATED_DIR') -> dict[str, Any]:
        """What ``rules`` drop, per domain: training samples and tokens kept and dropped (those of the samples the
        history never saw included, from the dataset's manifest), what each rule dropped, a few dropped examples,
        and the ``reweigh curate`` command that writes the curated dataset to ``out``.

        Without the dataset the counts cover the samples the history saw, and tokens are ``None``.

        Raises:
            ValueError: For an impossible rule (the message of ``reweigh curate``'s check).
        """
        visited_by = {row['domain']: row['samples'] for row in self.summary.to_pylist()}
        selection = None
        if rules.any():  # without a rule nothing is dropped: the per-sample table stays on disk
            rules.check(self.domain_names)
            columns = ', '.join(columns_needed(rules))  # names from a fixed list
            selection = select(self._query(f'SELECT {columns} FROM samples'), rules, self.domain_names)
        manifest = self.lookup.manifest if self.lookup is not None else None
        sizes = {d.index: d for d in manifest.domains} if manifest is not None else {}
        per_domain = []
        for d, name in enumerate(self.domain_names):
            gone_ids = selection.dropped[selection.domains == d] if selection is not None else np.zeros(0, np.int64)
            visited, gone = int(visited_by.get(d, 0)), len(gone_ids)
            entry = {'domain': d, 'name': name, 'visited': visited, 'dropped_visited': gone}
            if d in sizes:
                info = sizes[d]
                total, tokens = info.sequences.get('train', 0), info.tokens.get('train', 0)
                dropped_samples, dropped_tokens = gone, _tokens(gone_ids, total, tokens, manifest.seq_len)
                if rules.drop_unvisited:  # and every training sample the history never saw
                    dropped_samples += total - visited
                    dropped_tokens += tokens - _visited_tokens(selection, d, visited, total, tokens, manifest.seq_len)
                entry.update(samples=total, tokens=tokens, dropped=dropped_samples, kept=total - dropped_samples,
                             dropped_tokens=dropped_tokens, kept_tokens=tokens - dropped_tokens)
            else:
                entry.update(samples=visited, tokens=None, dropped=gone, kept=visited - gone, dropped_tokens=None,
                             kept_tokens=None)
            entry['examples'] = [{'sample_id': i, 'reason': selection.reason(i), 'text': self._snippet(i)}
                                 for i in gone_ids[:EXAMPLES].tolist()]
            per_domain.append(entry)
        command = curate_command(self.run, rules, out, self.dataset if self.lookup is not None else None)
        return {'domains': per_domain, 'reasons': selection.reason_counts() if selection is not None else {},
                'command': command, 'exact': bool(sizes)}

    def runs(self) -> dict[str, Any]:
        """The validation curves of :attr:`compared` per domain and arm (mean, min and max over an arm's seeds, as
        ``reweigh compare`` computes them) and the final table; ``{'arms': []}`` with ``note`` where no run has
        evaluations.

        Raises:
            ValueError: If a run to compare has no ``metrics.jsonl`` or cannot be read.
        """
        if self._comparison is None:
            self._comparison = _comparison(self.compared, self.domain_names, self._arm_names)
        return self._comparison

    # --- helpers --------------------------------------------------------------------------------------------------

    def _snippet(self, sample_id: int, chars: int = 240) -> str | None:
        if self.lookup is None:
            return None
        try:
            return self.lookup.text(int(sample_id))[:chars]
        except (KeyError, IndexError, OSError, ValueError):
            return None

    def _name(self, domain: int) -> str:
        return self.domain_names[domain] if 0 <= domain < len(self.domain_names) else f'domain {domain}'


_ANALYSIS_TABLES = ('summary', 'over_time', 'quantiles')


def _history_key(history: str, windows: int) -> str:
    """What the cache was built from: every part's path, size and modification time, and the settings.

    Raises:
        ValueError: If the history holds no part files.
    """
    from reweigh.history.format import filesystem_for, list_parts

    filesystem, folder = filesystem_for(history)
    parts = list_parts(folder, filesystem, recursive=True)
    if not parts:
        raise ValueError(f'{history} holds no loss history (no part files)')
    infos = filesystem.get_file_info([part.path for part in parts])
    described = json.dumps([CACHE_VERSION, windows, [[i.path, i.size, i.mtime_ns] for i in infos]])
    return hashlib.sha256(described.encode()).hexdigest()


def _is_current(cache: Path, key: str) -> bool:
    import duckdb

    if not cache.is_file():
        return False
    try:
        with duckdb.connect(str(cache), read_only=True) as con:
            return json.loads(con.sql('SELECT info FROM meta').fetchall()[0][0]).get('key') == key
    except (duckdb.Error, ValueError, IndexError, KeyError):  # an older, broken or foreign file: rebuild it
        return False


def _build_cache(cache: Path, history: str, key: str, windows: int, memory_limit: str) -> None:
    """Write the views' tables into ``cache`` (through a temporary file, renamed when complete): the per-sample table
    and the analysis's tables (:func:`~reweigh.analysis.analyze_history`), and every visit with its weight relative
    to uniform, sorted by sample id (so that a sample's visits are a range of the file, not a scan of the history)."""
    import duckdb

    from reweigh.analysis import analyze_history
    from reweigh.analysis.tables import register_history
    from reweigh.history.format import read_metadata

    partial = cache.with_name(f'.{cache.name}.{os.getpid()}.partial')
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix='reweigh-explore-', dir=cache.parent) as spill:
        samples = os.path.join(spill, 'samples.parquet')
        analysis = analyze_history(history, windows=windows, k=0, samples_to=samples, map_points=0, memory_limit=memory_limit)
        con = duckdb.connect(str(partial), config={'memory_limit': memory_limit, 'temp_directory': spill})
        try:
            con.execute('CREATE TABLE samples AS SELECT * FROM read_parquet(?) ORDER BY sample_id', [samples])
            register_history(con, history)
            con.sql('CREATE TEMP TABLE counts AS SELECT step, microbatch, count(*) AS n FROM history GROUP BY ALL')
            con.sql("""
                CREATE TABLE visits AS
                SELECT h.sample_id, h.step, h.microbatch, h.loss, h.weight * c.n AS rel_weight, h.active
                FROM history h JOIN counts c USING (step, microbatch) ORDER BY h.sample_id, h.step, h.microbatch""")
            for name, table in zip(_ANALYSIS_TABLES, (analysis.summary, analysis.domain_over_time, analysis.weight_quantiles)):
                con.register('analysis_table', table)
                con.sql(f'CREATE TABLE {name} AS SELECT * FROM analysis_table')
                con.unregister('analysis_table')
            info = {'key': key, 'rows': analysis.rows, 'steps': analysis.steps,
                    'first_active_step': analysis.first_active_step, 'missing': analysis.missing_text(),
                    'domains': read_metadata(history).get('domains')}
            con.execute('CREATE TABLE meta AS SELECT ? AS info', [json.dumps(info)])
            con.sql('CREATE TABLE whole_maps (y VARCHAR, color VARCHAR, value VARCHAR)')
            for y, color in itertools.product(MAP_AXES, COLORS):  # every axis and colour of the whole map, in bins
                whole = _data_map(lambda sql, params: con.sql(sql, params=list(params)).to_arrow_table(), y, color, None,
                                  None, DEFAULT_BINS, max_points=-1)
                con.execute('INSERT INTO whole_maps VALUES (?, ?, ?)', [y, color, json.dumps(whole)])
            con.sql('DROP VIEW IF EXISTS history')
        finally:
            con.close()
    os.replace(partial, cache)


def _comparison(paths: Sequence[str], domain_names: Sequence[str], names: dict[str, str]) -> dict[str, Any]:
    from reweigh.analysis.compare import compare_runs
    from reweigh.analysis.runs import load_run

    runs = []
    for path in paths:
        try:
            runs.append(load_run(path))
        except FileNotFoundError as e:
            if len(paths) == 1:  # a history folder or a run without evaluations: nothing to set side by side
                return {'arms': [], 'note': str(e)}
            raise ValueError(str(e)) from None
        except OSError as e:
            raise ValueError(f'cannot read {path}: {e}') from None
    comparison = compare_runs(runs, names=names, domain_names=domain_names, histories=False)
    curves: dict[str, dict[str, dict[str, list]]] = {}
    for row in comparison.curves.to_pylist():
        curve = curves.setdefault(row['domain'], {}).setdefault(row['arm'], {'step': [], 'mean': [], 'min': [], 'max': []})
        for key, column in (('step', 'step'), ('mean', 'loss_mean'), ('min', 'loss_min'), ('max', 'loss_max')):
            curve[key].append(row[column])
    arms = list(dict.fromkeys(comparison.runs['arm'].to_pylist()))
    return {'arms': arms, 'baseline': comparison.baseline, 'runs': comparison.runs.to_pylist(), 'curves': curves,
            'final': comparison.final.to_pylist()}


def curate_command(run: str, rules: Rules, out: str = 'CURATED_DIR', dataset: str | None = None) -> str:
    """The ``reweigh curate`` command line that applies ``rules`` to ``run`` and writes the curated dataset to ``out``.

    Example:
        >>> from reweigh.analysis.curation import Rules
        >>> from reweigh.explore.views import curate_command
        >>> curate_command('runs/demo', Rules(drop_below=0.5, min_visits=2, caps={'web docs': 100}), 'data/next')
        "reweigh curate runs/demo --out data/next --drop-below 0.5 --min-visits 2 --cap 'web docs=100'"
    """
    words = ['reweigh', 'curate', run, '--out', out]
    if rules.drop_below is not None:
        words += ['--drop-below', f'{rules.drop_below:g}', '--min-visits', str(rules.min_visits)]
    if rules.drop_easy_stable is not None:
        words += ['--drop-easy-stable', f'{rules.drop_easy_stable:g}']
    if rules.keep_top is not None:
        words += ['--keep-top', f'{rules.keep_top:g}']
    if rules.score != 'weight':
        words += ['--score', rules.score]
    for name, cap in rules.caps.items():
        words += ['--cap', f'{name}={cap}']
    if rules.drop_unvisited:
        words.append('--drop-unvisited')
    if dataset:
        words += ['--dataset', dataset]
    return shlex.join(words)


def _data_map(query: Callable[[str, Sequence[Any]], pa.Table], y: str, color: str, region: Sequence[float] | None,
              domain: int | None, bins: int, max_points: int) -> dict[str, Any]:
    """:meth:`Explorer.data_map` with DuckDB's ``query`` (SQL and bound parameters in, a table out)."""
    if y not in MAP_AXES:
        raise ValueError(f'y must be one of {", ".join(MAP_AXES)}, got {y!r}')
    if color not in COLORS:
        raise ValueError(f'color must be one of {", ".join(COLORS)}, got {color!r}')
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f'bins must be in [1, {MAX_BINS}], got {bins}')
    where, params = [f'mean_loss IS NOT NULL AND {y} IS NOT NULL AND isfinite(mean_loss) AND isfinite({y})'], []
    if region is not None:
        x0, x1, y0, y1 = _region(region)
        where.append(f'mean_loss BETWEEN ? AND ? AND {y} BETWEEN ? AND ?')
        params += [x0, x1, y0, y1]
    if domain is not None:
        where.append('domain = ?')
        params.append(int(domain))
    condition = ' AND '.join(where)
    column = COLORS[color]
    count, lo_x, hi_x, lo_y, hi_y = query(
        f'SELECT count(*), min(mean_loss), max(mean_loss), min({y}), max({y}) FROM samples WHERE {condition}',
        params).to_pylist()[0].values()
    if count <= max_points or count == 0:
        table = query(f'SELECT sample_id, mean_loss AS x, {y} AS y, domain, {column} AS color FROM samples '
                      f'WHERE {condition} ORDER BY sample_id', params)
        return {'kind': 'points', 'count': count, **{name: table[name].to_pylist() for name in table.column_names}}
    x0, x1, y0, y1 = (_region(region) if region is not None else (lo_x, hi_x, lo_y, hi_y))
    dx, dy = (x1 - x0) / bins or 1.0, (y1 - y0) / bins or 1.0
    aggregate = 'mode(domain)' if color == 'domain' else f'avg({column})'
    cells = query(f"""
        SELECT least(CAST(floor((mean_loss - ?) / ?) AS INTEGER), ?) AS i,
               least(CAST(floor(({y} - ?) / ?) AS INTEGER), ?) AS j, count(*) AS n, {aggregate} AS color
        FROM samples WHERE {condition} GROUP BY ALL ORDER BY i, j""", [x0, dx, bins - 1, y0, dy, bins - 1, *params])
    return {'kind': 'bins', 'count': count, 'extent': [x0, x1, y0, y1], 'bins': bins,
            **{name: cells[name].to_pylist() for name in cells.column_names}}


def _region(region: Sequence[float]) -> tuple[float, float, float, float]:
    values = [float(v) for v in region]
    if len(values) != 4 or not all(np.isfinite(values)) or values[0] > values[1] or values[2] > values[3]:
        raise ValueError(f'region must be 4 finite numbers x0 <= x1, y0 <= y1, got {list(region)}')
    return values[0], values[1], values[2], values[3]


def _visited_tokens(selection: Any, domain: int, visited: int, sequences: int, tokens: int, seq_len: int) -> int:
    """Tokens of the ``visited`` training samples of ``domain`` that the history saw (``selection.visited``)."""
    from reweigh.pipeline.ids import make_sample_id

    last = make_sample_id(domain, 'train', sequences - 1)
    i = int(np.searchsorted(selection.visited, last))
    seen_last = i < len(selection.visited) and selection.visited[i] == last
    return visited * seq_len + (tokens - sequences * seq_len if seen_last else 0)


def _tokens(sample_ids: np.ndarray, sequences: int, tokens: int, seq_len: int) -> int:
    """Tokens of a domain's training samples ``sample_ids``: ``seq_len`` each, but the domain's last, shorter one
    (:mod:`reweigh.pipeline.packing`), whose length is what the manifest's token count leaves."""
    from reweigh.pipeline.ids import decode_sample_ids

    if not len(sample_ids):
        return 0
    _, _, index = decode_sample_ids(sample_ids)
    last = tokens - (sequences - 1) * seq_len
    return int(len(index) * seq_len + (index == sequences - 1).sum() * (last - seq_len))
