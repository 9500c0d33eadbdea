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
    >>> selection = select(samples, Rules(drop_below=0.5, min_visits=2))
    >>> selection.dropped.tolist(), selection.reason(1), selection.keeps(2), selection.keeps(99)
    ([1], 'weight below 0.5', True, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

__all__ = ['SCORES', 'Rules', 'Selection', 'columns_needed', 'select']

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
    """What :func:`select` decided, as sorted numpy arrays (a few bytes per visited sample)."""
    visited: np.ndarray
    """Sorted ids of the samples the history saw."""
    dropped: np.ndarray
    """Sorted ids of the visited samples the rules drop."""
    codes: np.ndarray
    """For each of :attr:`dropped`, the index of its rule in :attr:`reasons`."""
    reasons: tuple[str, ...]
    """The rules that dropped samples, in words."""
    drop_unvisited: bool
    """Whether samples the history never saw are dropped too."""
    thresholds: dict[str, float]
    """The rules' thresholds in data-map units (``easy_stable_loss``, ``easy_stable_std``), for the report."""
    domains: np.ndarray
    """For each of :attr:`dropped`, its domain index."""

    def _find(self, ids: np.ndarray, sample_id: int) -> int:
        i = int(np.searchsorted(ids, sample_id))
        return i if i < len(ids) and ids[i] == sample_id else -1

    def keeps(self, sample_id: int) -> bool:
        """Whether the sample goes into the curated dataset."""
        if self._find(self.visited, sample_id) < 0:
            return not self.drop_unvisited
        return self._find(self.dropped, sample_id) < 0

    def reason(self, sample_id: int) -> str | None:
        """Why the sample was dropped (``None`` if it was not, or was never visited)."""
        i = self._find(self.dropped, sample_id)
        return None if i < 0 else self.reasons[self.codes[i]]

    def reason_counts(self) -> dict[str, int]:
        """How many visited samples each rule dropped."""
        counts = np.bincount(self.codes, minlength=len(self.reasons))
        return {r: int(c) for r, c in zip(self.reasons, counts) if c}


def _quantile(values: np.ndarray, q: float) -> float:
    ordered = np.sort(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def columns_needed(rules: Rules) -> list[str]:
    """The per-sample columns :func:`select` reads for ``rules``.

    Example:
        >>> from reweigh.analysis.curation import Rules, columns_needed
        >>> columns_needed(Rules(drop_below=0.5)), columns_needed(Rules(keep_top=0.5, score='loss'))
        (['sample_id', 'domain', 'mean_rel_weight', 'active_visits'], ['sample_id', 'domain', 'mean_loss'])
    """
    needed = ['sample_id', 'domain']
    if rules.drop_below is not None:
        needed += ['mean_rel_weight', 'active_visits']
    if rules.drop_easy_stable is not None:
        needed += ['mean_loss', 'loss_std']
    if rules.keep_top is not None or rules.caps:
        needed.append('mean_rel_weight' if rules.score == 'weight' else 'mean_loss')
    return list(dict.fromkeys(needed))


def select(samples: pa.Table, rules: Rules, domain_names: list[str] | None = None) -> Selection:
    """Apply ``rules`` to the per-sample table of a history (see the module docstring for the order).

    Args:
        samples: Per-sample statistics, as :attr:`Analysis.samples <reweigh.analysis.Analysis.samples>`; only the
            columns the rules read are needed (``sample_id`` and ``domain`` always; :func:`columns_needed`).
        rules: The rules.
        domain_names: Names by domain index (for ``caps``). Default: ``domain 0``, ...

    Returns:
        Selection: the dropped sample ids, each with the rule that dropped it.
    """
    def column(name: str, dtype: type) -> np.ndarray:
        """A column, read when a rule needs it (without a copy where one chunk is of its type already: a history of
        100M rows has 25M samples, 200 MB a column)."""
        values = samples[name].fill_null(np.nan) if name == 'mean_rel_weight' else samples[name]
        return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)

    ids, domain = column('sample_id', np.int64), column('domain', np.int64)
    names = domain_names or [f'domain {d}' for d in range(1 + int(domain.max(initial=-1)))]
    code = np.full(len(ids), -1, dtype=np.int64)  # -1: kept; else the index of the rule in `reasons`
    reasons: list[str] = []
    thresholds: dict[str, float] = {}

    def drop(mask: np.ndarray, reason: str) -> None:
        mask = mask & (code < 0)
        if mask.any():
            reasons.append(reason)
            code[mask] = len(reasons) - 1

    if rules.drop_below is not None:
        with np.errstate(invalid='ignore'):
            low = column('mean_rel_weight', np.float64) < rules.drop_below
        drop(low & (column('active_visits', np.int64) >= rules.min_visits), f'weight below {rules.drop_below}')
    if rules.drop_easy_stable is not None and len(ids):
        loss, std = column('mean_loss', np.float64), column('loss_std', np.float64)
        loss_q, std_q = _quantile(loss, rules.drop_easy_stable), _quantile(std, rules.drop_easy_stable)
        thresholds.update(easy_stable_loss=loss_q, easy_stable_std=std_q)
        drop((loss <= loss_q) & (std <= std_q), f'easy and stable (loss <= {loss_q:.3g}, std <= {std_q:.3g})')
    if rules.keep_top is not None or rules.caps:  # the rules that rank a domain's samples by score
        score = np.nan_to_num(column('mean_rel_weight' if rules.score == 'weight' else 'mean_loss', np.float64),
                              nan=-np.inf)
        for d in np.unique(domain):
            members = np.flatnonzero((domain == d) & (code < 0))
            members = members[np.lexsort((ids[members], -score[members]))]  # highest score first, then by id
            keep, reason = len(members), ''
            if rules.keep_top is not None:
                keep, reason = math.ceil(rules.keep_top * len(members)), f'not in the top {rules.keep_top:g} by {rules.score}'
            name = names[d] if 0 <= d < len(names) else f'domain {d}'
            if name in rules.caps and rules.caps[name] < keep:
                keep, reason = rules.caps[name], f'over the cap of {rules.caps[name]} for {name}'
            beyond = np.zeros(len(ids), dtype=bool)
            beyond[members[keep:]] = True
            drop(beyond, reason)
    order = np.argsort(ids, kind='stable')
    dropped = order[code[order] >= 0]
    return Selection(ids[order], ids[dropped], code[dropped], tuple(reasons), rules.drop_unvisited, thresholds,
                     domain[dropped])
