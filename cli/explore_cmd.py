"""``reweigh explore RUN``: the run's whole loss history in the browser (a local web app; see reweigh.explore)."""

from __future__ import annotations

import argparse
import socket
import sys
import time

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'explore',
        help='browse a run\'s loss history in the browser: data map, samples, domains, curation',
        description='Start a local web app over a run\'s per-sample loss history and the dataset it trained on: '
        'the data map of every sample (mean loss against loss variability or mean weight; zoom from bins to '
        'points), a sample\'s text and its loss and weight at every visit, the domains over training, and what '
        'reweigh curate rules would drop, live, with the command that does it. RUN is a run folder, a history '
        'folder or an object-store URI of one; more runs add their validation curves beside its own. It listens '
        'on 127.0.0.1 only unless --host says otherwise. The first start on a history builds a cache of it '
        '(RUN/analysis/explore.duckdb); later ones open it at once. Example: reweigh explore runs/tiny-cpu',
    )
    p.add_argument('target', metavar='RUN_DIR_OR_URI', help='the run to explore')
    p.add_argument('others', metavar='RUN', nargs='*',
                   help='more runs whose validation curves are set beside its own, grouped into arms as reweigh compare '
                   'does (ARM=RUN names a run\'s arm, for RUN_DIR_OR_URI too)')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 shares it on the network)')
    p.add_argument('--port', type=int, default=DEFAULT_PORT, help=f'port (default: {DEFAULT_PORT}; 0 picks a free one)')
    p.add_argument('--dataset', help='the prepared dataset the run trained on (default: the one in RUN/summary.json)')
    p.add_argument('--dataset-cache', help='local cache folder for a remote --dataset')
    p.add_argument('--windows', type=int, default=50, help='step windows of the over-time views (default: 50)')
    p.add_argument('--cache', metavar='DIR', help='where the explorer keeps what it read of the history, built once per '
                   'history (default: RUN/analysis, or ./analysis for a URI)')
    p.set_defaults(run=run, extra='explore')  # reweigh.integrations.extras


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (so that a port in use is a one-line error, not a traceback).

    Raises:
        ValueError: If the port is in use or the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if port and e.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise ValueError(f'port {port} on {host} is in use; pick another with --port (0 picks a free one)') from None
        raise ValueError(f'cannot listen on {host}:{port}: {e.strerror or e}') from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    if args.windows < 1:
        raise ValueError(f'--windows must be >= 1, got {args.windows}')
    sock = listen(args.host, args.port)  # before the history is read: a busy port fails at once
    import uvicorn

    from reweigh.cli.compare_cmd import named_runs
    from reweigh.explore.app import create_app
    from reweigh.explore.views import Explorer
    from reweigh.history.format import list_parts
    from reweigh.train.run_folder import RunFolder

    (target, *others), names = named_runs([args.target, *args.others])
    start = time.perf_counter()
    try:
        history, _ = RunFolder(target).locate_history()
        if not list_parts(history, recursive=True):  # checked before the progress line: one line for the error
            raise ValueError(f'{target} has no loss history (no part files under {history})')
        print(f'reweigh explore: reading {history} ...', file=sys.stderr, flush=True)
        explorer = Explorer(target, dataset=args.dataset, dataset_cache=args.dataset_cache, windows=args.windows,
                            cache_dir=args.cache, on_build=lambda message: print(f'reweigh explore: {message}',
                                                                                 file=sys.stderr, flush=True),
                            compare=others, arm_names=names)
    except OSError as e:  # the store cannot be reached, or refuses the credentials
        sock.close()
        raise ValueError(f'cannot read {target}: {e}') from e
    except ValueError:
        sock.close()
        raise
    if others:
        try:
            explorer.runs()  # a run to compare that cannot be read is an error now, not a blank panel
        except ValueError:
            explorer.close()
            sock.close()
            raise
    host, port = sock.getsockname()[:2]
    shown = f'[{host}]' if ':' in host else host
    print(f'reweigh explore: {explorer.rows:,} history rows {"read" if explorer.built else "opened"} in '
          f'{time.perf_counter() - start:.1f} s'
          + (f'; text unavailable: {explorer.text_unavailable}' if explorer.text_unavailable else ''), file=sys.stderr)
    print(f'reweigh explore: open http://{shown}:{port}/ (Ctrl-C stops it)', flush=True)
    try:
        uvicorn.Server(uvicorn.Config(create_app(explorer), log_level='warning')).run(sockets=[sock])
    finally:
        explorer.close()
        sock.close()
    return 0
