"""The web app of ``reweigh explore``: the page, its JavaScript, and a JSON route per view of an :class:`Explorer`.

Routes (all ``GET``): ``/`` the page; ``/static/explore.js``, ``/static/explore.css`` and ``/static/plotly.min.js``
(from the installed ``plotly`` package: the page loads nothing from the network); ``/api/overview``; ``/api/map``
(``y``, ``color``, ``x0, x1, y0, y1``, ``domain``, ``bins``); ``/api/sample/{id}``; ``/api/domains``;
``/api/runs`` (the validation curves of the runs compared); ``/api/curate`` (the rules of ``reweigh curate``:
``drop_below``, ``min_visits``, ``drop_easy_stable``, ``keep_top``, ``score``, ``cap`` as ``DOMAIN=N``, repeatable,
``drop_unvisited``, and ``out``).

Every query parameter is parsed as a number or checked against a fixed list, and an unknown one is refused: a
request cannot name a file (the static files are a fixed list) nor run SQL of its own. A bad value is a ``400``
with ``{"error": "..."}``, an unknown sample a ``404``.

Example:
    >>> from reweigh.explore.app import parse_rules
    >>> parse_rules({'drop_below': ['0.5'], 'min_visits': ['2'], 'cap': ['code=10']}).caps
    {'code': 10}
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from reweigh.analysis.curation import SCORES, Rules
from reweigh.explore.views import DEFAULT_BINS, Explorer

__all__ = ['create_app', 'parse_rules']

STATIC = Path(str(resources.files('reweigh.explore') / 'static'))
_MEDIA = {'.js': 'text/javascript', '.css': 'text/css', '.html': 'text/html'}


class BadRequest(ValueError):
    """A query the app refuses (answered with 400 and the message)."""


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js'


def _files() -> dict[str, Path]:
    return {'explore.js': STATIC / 'explore.js', 'explore.css': STATIC / 'explore.css', 'plotly.min.js': _plotly_js()}


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f'{name} given {len(values)} times')
    return values[0]


def _number(query: dict[str, list[str]], name: str, kind: type = float) -> Any:
    text = _one(query, name)
    if text is None or text == '':
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadRequest(f'{name} must be {"an integer" if kind is int else "a number"}, got {text!r}') from None
    if not math.isfinite(value):
        raise BadRequest(f'{name} must be finite, got {text!r}')
    return value


def _flag(query: dict[str, list[str]], name: str) -> bool:
    text = _one(query, name)
    if text not in (None, '', '0', '1', 'false', 'true'):
        raise BadRequest(f'{name} must be true or false, got {text!r}')
    return text in ('1', 'true')


def _check(query: dict[str, list[str]], allowed: set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f'unknown parameter {unknown[0]!r}; this route takes {", ".join(sorted(allowed)) or "none"}')


CURATE_PARAMETERS = {'drop_below', 'min_visits', 'drop_easy_stable', 'keep_top', 'score', 'cap', 'drop_unvisited', 'out'}


def parse_rules(query: dict[str, list[str]]) -> Rules:
    """The curation :class:`~reweigh.analysis.curation.Rules` of a query (values as lists of strings).

    Raises:
        BadRequest: For a value that is not a number where one is needed, or a ``cap`` not written ``DOMAIN=N``.
    """
    score = _one(query, 'score') or 'weight'
    if score not in SCORES:
        raise BadRequest(f'score must be one of {", ".join(SCORES)}, got {score!r}')
    caps = {}
    for item in query.get('cap', []):
        name, _, count = item.rpartition('=')
        if not name or not count.isdigit():
            raise BadRequest(f'cap must be DOMAIN=N, got {item!r}')
        caps[name] = int(count)
    min_visits = _number(query, 'min_visits', int)
    return Rules(_number(query, 'drop_below'), 1 if min_visits is None else min_visits, _number(query, 'drop_easy_stable'),
                 _number(query, 'keep_top'), score, caps, _flag(query, 'drop_unvisited'))


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite as ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def create_app(explorer: Explorer) -> Starlette:
    """The Starlette app over ``explorer`` (serve it with uvicorn; ``reweigh explore`` does)."""

    def query_of(request: Request, allowed: set[str]) -> dict[str, list[str]]:
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        _check(query, allowed)
        return query

    def answer(work) -> Response:
        try:
            return JSONResponse(_finite(work()))
        except (BadRequest, ValueError) as e:
            return JSONResponse({'error': str(e)}, status_code=400)
        except KeyError as e:
            return JSONResponse({'error': str(e.args[0]) if e.args else 'not found'}, status_code=404)

    def page(request: Request) -> Response:
        return FileResponse(STATIC / 'index.html', media_type='text/html')

    def static(request: Request) -> Response:
        path = _files().get(request.path_params['name'])
        if path is None:
            return JSONResponse({'error': 'no such file'}, status_code=404)
        return FileResponse(path, media_type=_MEDIA[path.suffix])

    def overview(request: Request) -> Response:
        return answer(lambda: (query_of(request, set()), explorer.overview())[1])

    def data_map(request: Request) -> Response:
        def work() -> dict[str, Any]:
            q = query_of(request, {'y', 'color', 'x0', 'x1', 'y0', 'y1', 'domain', 'bins'})
            corners = [_number(q, name) for name in ('x0', 'x1', 'y0', 'y1')]
            if any(c is not None for c in corners) and any(c is None for c in corners):
                raise BadRequest('a region needs all of x0, x1, y0 and y1')
            bins = _number(q, 'bins', int)
            return explorer.data_map(_one(q, 'y') or 'loss_std', _one(q, 'color') or 'domain',
                                     None if corners[0] is None else corners, _number(q, 'domain', int),
                                     DEFAULT_BINS if bins is None else bins)
        return answer(work)

    def sample(request: Request) -> Response:
        return answer(lambda: (query_of(request, set()), explorer.sample(request.path_params['sample_id']))[1])

    def domains(request: Request) -> Response:
        return answer(lambda: (query_of(request, set()), explorer.domains())[1])

    def runs(request: Request) -> Response:
        return answer(lambda: (query_of(request, set()), explorer.runs())[1])

    def curate(request: Request) -> Response:
        def work() -> dict[str, Any]:
            q = query_of(request, CURATE_PARAMETERS)
            return explorer.curation(parse_rules(q), _one(q, 'out') or 'CURATED_DIR')
        return answer(work)

    return Starlette(routes=[
        Route('/', page), Route('/favicon.ico', lambda request: Response(status_code=204)),
        Route('/static/{name}', static), Route('/api/overview', overview), Route('/api/map', data_map),
        Route('/api/sample/{sample_id:int}', sample), Route('/api/domains', domains), Route('/api/runs', runs),
        Route('/api/curate', curate),
    ])
