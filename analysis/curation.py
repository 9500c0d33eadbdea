"""Which training samples to keep in the next dataset, from what a run's loss history says about each.

Rules work on the per-sample table of :func:`~reweigh.analysis.analyze_history` (``sample_id``, ``domain``,
``visits``, ``active_visits``, ``mean_loss``, ``loss_std``, ``mean_rel_weight``) and apply in this order:

1. ``drop_below=W, min_visits=K``: drop samples whose mean weight relative to uniform after warm-up is
   below ``W`` over at least ``K`` reweighted visits (consistently deprioritised).
2. ``drop_easy_stable=Q``: drop the data map's "easy and stable" corner: samples in the lowest ``Q``
   quantile of mean loss *and* of loss variability across visits (learnt, and not changing).
3. ``keep_top=F, score=...``: of the samples still kept, keep the top fraction ``F`` by ``score``
   (``'weight'``: mean relative weight; ``'loss'``: mean loss), per domain.
4. ``caps={domain: N}``: keep at most ``N`` samples of a domain (the highest by ``score``).

Samples the history never saw (``visits == 0``: not in the table) are kept unless ``drop_unvisited``.
This module imports neither torch nor Composer.

Example:
    >>> import pyarrow as pa
    >>> from reweigh.analysis.curation import Rules, select
    >>> samples = pa.table({'sample_id': [1, 2, 3], 'domain': [0, 0, 1], 'visits': [4, 4, 4],
    ...                     'active_visits': [3, 3, 3], 'mean_loss': [0.1, 2.0, 3.0],
    ...                     'loss_std': [0.0, 0.3, 0.2], 'mean_rel_weight': [0.2, 1.2, 1.4]})
    >>> select(samples, Rules(drop_below=0.5, min_visits=2)).dropped
    {1: 'weight below 0.5'}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa

__all__ = ['SCORES', 'Rules', 'Selection', 'select']

SCORES = ('weight', 'loss')


@dataclass
class Rules:
    """The curation rules (see the module docstring); recorded as they are in the curated manifest."""
    drop_below: float | None = None
    min_visits: int = 1
    drop_easy_stable: float | None = None
    keep_top: float | None = None
    score: str = 'weight'
    caps: dict[str, int] = field(default_factory=dict)
    drop_unvisited: bool = False

    def check(self, domain_names: list[str]) -> None:
        """Raise ``ValueError`` naming the rule for an impossible value."""
        if self.drop_below is not None and not (math.isfinite(self.drop_below) and self.drop_below > 0):
            raise ValueError(f'--drop-below must be a number > 0 (a weight relative to uniform), got {self.drop_below}')
        if self.min_visits < 1:
            raise ValueError(f'--min-visits must be >= 1, got {self.min_visits}')
        if self.drop_easy_stable is not None and not 0 < self.drop_easy_stable < 1:
            raise ValueError(f'--drop-easy-stable must be a quantile in (0, 1), got {self.drop_easy_stable}')
        if self.keep_top is not None and not 0 < self.keep_top <= 1:
            raise ValueError(f'--keep-top must be a fraction in (0, 1], got {self.keep_top}')
        if self.score not in SCORES:
            raise ValueError(f'--score must be one of {", ".join(SCORES)}, got {self.score!r}')
        for name, cap in self.caps.items():
            if name not in domain_names:
                raise ValueError(f'--cap {name}: no such domain; the dataset has {", ".join(domain_names)}')
            if cap < 0:
                raise ValueError(f'--cap {name}: must be >= 0, got {cap}')
        if not self.any():
            raise ValueError('no rule given: set --drop-below, --drop-easy-stable, --keep-top, --cap or --drop-unvisited')

    def any(self) -> bool:
        """Whether any rule would drop something."""
        return any(v is not None for v in (self.drop_below, self.drop_easy_stable, self.keep_top)) \
            or bool(self.caps) or self.drop_unvisited

    def record(self) -> dict[str, Any]:
        """The rules as plain data, for the manifest."""
        return asdict(self)


class Selection(NamedTuple):
    """What :func:`select` decided."""
    dropped: dict[int, str]
    """Sample id to the rule that dropped it (visited samples only; see :attr:`drop_unvisited`)."""
    drop_unvisited: bool
    """Whether samples the history never saw are dropped too."""
    thresholds: dict[str, float]
    """The rules' thresholds in data-map units (``easy_stable_loss``, ``easy_stable_std``), for the report."""

    def keeps(self, sample_id: int, visited: bool) -> bool:
        """Whether the sample goes into the curated dataset."""
        return sample_id not in self.dropped if visited else not self.drop_unvisited


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def select(samples: pa.Table, rules: Rules, domain_names: list[str] | None = None) -> Selection:
    """Apply ``rules`` to the per-sample table of a history (see the module docstring for the order).

    Args:
        samples: Per-sample statistics, as :attr:`Analysis.samples <reweigh.analysis.Analysis.samples>`.
        rules: The rules.
        domain_names: Names by domain index (for ``caps``). Default: ``domain 0``, ...

    Returns:
        Selection: the dropped sample ids, each with the rule that dropped it.
    """
    rows = samples.select(['sample_id', 'domain', 'active_visits', 'mean_loss', 'loss_std', 'mean_rel_weight']).to_pylist()
    names = domain_names or [f'domain {d}' for d in range(1 + max((r['domain'] for r in rows), default=-1))]
    dropped: dict[int, str] = {}
    thresholds: dict[str, float] = {}
    if rules.drop_below is not None:
        for r in rows:
            if r['mean_rel_weight'] is not None and r['active_visits'] >= rules.min_visits \
                    and r['mean_rel_weight'] < rules.drop_below:
                dropped[r['sample_id']] = f'weight below {rules.drop_below}'
    if rules.drop_easy_stable is not None and rows:
        loss_q = _quantile([r['mean_loss'] for r in rows], rules.drop_easy_stable)
        std_q = _quantile([r['loss_std'] for r in rows], rules.drop_easy_stable)
        thresholds.update(easy_stable_loss=loss_q, easy_stable_std=std_q)
        for r in rows:
            if r['sample_id'] not in dropped and r['mean_loss'] <= loss_q and r['loss_std'] <= std_q:
                dropped[r['sample_id']] = f'easy and stable (loss <= {loss_q:.3g}, std <= {std_q:.3g})'

    def score(r: dict[str, Any]) -> float:
        value = r['mean_rel_weight'] if rules.score == 'weight' else r['mean_loss']
        return -math.inf if value is None else value

    by_domain: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r['sample_id'] not in dropped:
            by_domain.setdefault(r['domain'], []).append(r)
    for domain, members in by_domain.items():
        members.sort(key=lambda r: (-score(r), r['sample_id']))
        keep = len(members)
        reason = ''
        if rules.keep_top is not None:
            keep = math.ceil(rules.keep_top * len(members))
            reason = f'not in the top {rules.keep_top:g} by {rules.score}'
        name = names[domain] if 0 <= domain < len(names) else f'domain {domain}'
        if name in rules.caps and rules.caps[name] < keep:
            keep, reason = rules.caps[name], f'over the cap of {rules.caps[name]} for {name}'
        for r in members[keep:]:
            dropped[r['sample_id']] = reason
    return Selection(dropped, rules.drop_unvisited, thresholds)
