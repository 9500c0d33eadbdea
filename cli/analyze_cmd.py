"""``reweigh analyze RUN_DIR_OR_URI``: which samples and domains did training deprioritise, and when?"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'analyze',
        help='turn a run\'s loss history into tables, plots and a report',
        description='Read a run\'s per-sample loss history (Parquet) and write a Markdown report with PNG plots '
        'and the tables as Parquet/CSV. RUN is a run folder of `reweigh train` (holding summary.json and '
        'history/), a history folder, or an object-store URI of one (s3://, gs://). '
        'Example: reweigh analyze runs/tiny-cpu',
    )
    p.add_argument('target', metavar='RUN_DIR_OR_URI')
    p.add_argument('--out', help='output folder (default: RUN/analysis, or ./analysis for a URI)')
    p.add_argument('--dataset', help='prepared dataset root, for domain names and text snippets '
                   '(default: the one recorded in RUN/summary.json)')
    p.add_argument('--dataset-cache', help='local cache folder for a remote --dataset')
    p.add_argument('--windows', type=int, default=10, help='number of step windows for the over-time tables')
    p.add_argument('--top', type=int, default=10, help='how many most deprioritised/emphasised samples to list')
    p.set_defaults(run=run)


def _mix(target: str):
    """The run's domain mix over steps, if ``target`` is a run folder whose run mixed online (else ``None``)."""
    from reweigh.analysis.runs import load_run, mix_over_steps

    try:
        return mix_over_steps(load_run(target).train)
    except (FileNotFoundError, ValueError, OSError):  # a history folder, not a run folder: nothing to plot
        return None


def run(args: argparse.Namespace) -> int:
    from reweigh.analysis import analyze_history, most_deprioritised_domain, write_report
    from reweigh.train.run_folder import RunFolder

    if args.windows <= 0 or args.top < 0:
        raise ValueError('--windows must be > 0 and --top >= 0.')
    history, summary = RunFolder(args.target).locate_history()
    out = Path(args.out) if args.out else RunFolder(args.target).analysis
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        analysis = analyze_history(history, windows=args.windows, k=args.top, samples_to=out / 'samples.parquet')
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    except OSError as e:  # the store cannot be reached, or refuses the credentials
        raise ValueError(f'cannot read the history at {history}: {e}') from e
    elapsed = time.perf_counter() - start
    if analysis.missing:
        print(f'reweigh analyze: warning: the history is incomplete: {analysis.missing_text()}', file=sys.stderr)
    names: list[str] = []
    text_of = None
    dataset = args.dataset or summary.get('dataset')
    if dataset:
        from reweigh.pipeline import SampleLookup

        try:
            lookup = SampleLookup(dataset, args.dataset_cache or summary.get('dataset_cache'))
        except FileNotFoundError as e:
            raise ValueError(f'{e} (pass --dataset ROOT to name the dataset the run trained on)') from e
        names = lookup.domain_names_by_index

        def text_of(ids: list[int]) -> list[str]:
            return [lookup.text(i) for i in ids]
    else:  # no dataset (an llm-foundry or Hugging Face run): the names its loader recorded, if any
        from reweigh.history.format import read_metadata

        names = list(read_metadata(history).get('domains') or [])

    title, mix = f'reweigh loss history: {summary.get("run_name", args.target)}', _mix(args.target)
    report = write_report(analysis, out, names, text_of, title=title, k=args.top, mix=mix)
    interactive = _html_report(analysis, out, names, text_of, title, mix)
    print(f'reweigh analyze: {analysis.rows:,} rows over {analysis.steps} steps analysed in {elapsed:.2f} s '
          f'({analysis.rows / max(elapsed, 1e-9):,.0f} rows/s)')
    worst = most_deprioritised_domain(analysis.summary)
    if worst is not None:
        print(f'  most deprioritised domain: {names[worst] if worst < len(names) else worst}')
    print(f'  report: {report}')
    print(f'  interactive report: {interactive}')
    return 0


def _html_report(analysis, out: Path, names: list[str], text_of, title: str, mix) -> str:
    """Write report.html where plotly is installed (reweigh[explore]); what to print about it."""
    from reweigh.integrations.extras import missing_modules

    if missing_modules('explore'):
        return "not written (it needs reweigh[explore]: pip install 'reweigh[explore]')"
    from reweigh.analysis.report_html import write_html_report

    return str(write_html_report(analysis, out, names, text_of, title=title, mix=mix))
