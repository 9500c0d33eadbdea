"""`reweigh explore` at scale: start-up, the data map, a sample's visits and the curation panel on a large history.

The history is `scripts/bench_history.py`'s synthetic one (``--rows`` rows over ``--ranks`` rank folders, about
``--visits`` visits per sample id), written once into ``--workdir`` and kept there for the next run. Each
measurement runs in a fresh process, so its start-up counts, and reports its peak resident memory:

* first start: :class:`~reweigh.explore.views.Explorer` reads the history and builds its cache;
* later start: it opens the cache; then, in the same process, the views the page asks for, each timed over
  ``--repeats`` calls (median): the whole data map, the map of a zoomed-in region (as points), a sample's visits
  (a different random sample each call), the domains over training, and the curation counts of one rule.

With ``--browser`` it also times the page in headless Chromium, from navigation until the data map, and then every
panel, has drawn.

Example:
    python scripts/bench_explore.py --rows 100000000 --ranks 64 --batch 1024 --workdir /tmp/bench-explore
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_history import make_history  # noqa: E402

_MEASURE = r'''
import json, random, resource, statistics, sys, time
start = time.perf_counter()
from reweigh.analysis.curation import Rules
from reweigh.explore.views import Explorer
explorer = Explorer(sys.argv[1])
out = {'start_s': time.perf_counter() - start, 'built': explorer.built, 'rows': explorer.rows}
if sys.argv[2] == 'views':
    repeats = int(sys.argv[3])
    def timed(name, call):
        times = []
        for k in range(repeats):
            t = time.perf_counter(); result = call(k); times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
        return result
    whole = timed('map_s', lambda k: explorer.data_map())
    out['map_kind'], out['map_cells'] = whole['kind'], len(whole.get('n', whole.get('sample_id', [])))
    x0, x1, y0, y1 = whole['extent']
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    dx, dy = (x1 - x0) / 400, (y1 - y0) / 400
    zoomed = timed('zoomed_map_s', lambda k: explorer.data_map(region=[cx - dx, cx + dx, cy - dy, cy + dy]))
    out['zoomed_kind'], out['zoomed_count'] = zoomed['kind'], zoomed['count']
    ids = explorer._query('SELECT sample_id FROM samples USING SAMPLE 100 ROWS (reservoir, 7)')['sample_id'].to_pylist()
    visits = timed('sample_s', lambda k: explorer.sample(ids[k % len(ids)]))
    out['sample_visits'] = visits['visits']
    timed('domains_s', lambda k: explorer.domains())
    curation = timed('curation_s', lambda k: explorer.curation(Rules(drop_below=1.0 - 0.01 * k)))
    out['curation_dropped'] = sum(d['dropped'] for d in curation['domains'])
explorer.close()
out['peak_rss_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
'''


def measure(run: Path, what: str, repeats: int) -> dict:
    done = subprocess.run([sys.executable, '-c', _MEASURE, str(run), what, str(repeats)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'the measurement failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def browser_seconds(run: Path) -> tuple[float, float]:
    """Seconds from navigating to the page until the data map has drawn, and until every panel has, in headless
    Chromium (cache built)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
    from browser_support import chromium, served, wait_for

    from reweigh.explore.views import Explorer

    explorer = Explorer(run)
    try:
        with served(explorer) as url, chromium() as driver:
            start = time.perf_counter()
            driver.get(url)
            wait_for(driver, "document.getElementById('map').dataset.kind", timeout=600)
            drawn = time.perf_counter() - start
            wait_for(driver, "document.body.dataset.ready === 'true'", timeout=600)
            return drawn, time.perf_counter() - start
    finally:
        explorer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=10_000_000)
    parser.add_argument('--ranks', type=int, default=8)
    parser.add_argument('--batch', type=int, default=512)
    parser.add_argument('--steps-per-part', type=int, default=100)
    parser.add_argument('--visits', type=float, default=4.0)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--workdir', required=True, help='where the history is written once and kept')
    parser.add_argument('--browser', action='store_true', help='also time the page in headless Chromium')
    parser.add_argument('--reuse-cache', action='store_true', help='keep the cache of an earlier run (skip the first start)')
    args = parser.parse_args()

    run = Path(args.workdir) / f'run-{args.rows}-{args.ranks}-{args.batch}'
    history = run / 'history'
    if not history.is_dir():
        start = time.perf_counter()
        rows = make_history(history, args.rows, args.ranks, args.batch, args.steps_per_part, args.visits)
        print(f'history: {rows:,} rows written in {time.perf_counter() - start:.0f} s', flush=True)
    files = list(history.rglob('part-*.parquet'))
    print(f'history: {run}, {len(files):,} parts, {sum(p.stat().st_size for p in files) / 2**30:.2f} GiB', flush=True)
    if not args.reuse_cache:
        (run / 'analysis' / 'explore.duckdb').unlink(missing_ok=True)
        first = measure(run, 'start', args.repeats)
        print(f'first start (reads the history, builds the cache): {first["start_s"]:.1f} s, '
              f'peak RSS {first["peak_rss_gib"]:.2f} GiB ({first["rows"]:,} rows)', flush=True)
    later = measure(run, 'views', args.repeats)
    print(f'later start (opens the cache): {later["start_s"]:.2f} s; then, medians of {args.repeats} calls:')
    print(f'  whole data map: {later["map_s"]:.3f} s ({later["map_kind"]}, {later["map_cells"]:,} cells)')
    print(f'  zoomed-in region: {later["zoomed_map_s"]:.3f} s ({later["zoomed_kind"]}, {later["zoomed_count"]:,} samples)')
    print(f'  a sample\'s visits: {later["sample_s"] * 1e3:.1f} ms ({later["sample_visits"]} visits)')
    print(f'  domains over training: {later["domains_s"] * 1e3:.1f} ms')
    print(f'  curation counts (--drop-below ~1): {later["curation_s"]:.2f} s ({later["curation_dropped"]:,} dropped)')
    print(f'  peak RSS of that process: {later["peak_rss_gib"]:.2f} GiB')
    if args.browser:
        drawn, ready = browser_seconds(run)
        print(f'page in headless Chromium, from navigation: data map drawn {drawn:.1f} s, every panel {ready:.1f} s')


if __name__ == '__main__':
    main()
