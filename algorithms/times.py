"""One parser for the Composer times reweigh accepts (warm-up, intervals, durations), with errors that say what is allowed."""

from __future__ import annotations

from collections.abc import Sequence

from composer.core import Time, TimeUnit

__all__ = ['parse_time']


def parse_time(value: str | int | Time, units: Sequence[TimeUnit], what: str = 'time') -> Time:
    """Parse a Composer time string (``'1000ba'``, ``'0.05dur'``, ``'1000000tok'``; spaces are ignored), a
    :class:`~composer.core.Time`, or an int number of batches, and check its unit and sign.

    Args:
        value: What to parse.
        units: The units allowed here.
        what: The name used in error messages.

    Raises:
        ValueError: If ``value`` cannot be parsed, uses a unit not in ``units``, or is negative.

    Example:
        >>> from composer.core import TimeUnit
        >>> from reweigh.algorithms.times import parse_time
        >>> parse_time('1000 ba', [TimeUnit.BATCH, TimeUnit.DURATION], 'warmup')
        Time(1000, TimeUnit.BATCH)
        >>> parse_time('2ep', [TimeUnit.BATCH], 'flush_interval')
        Traceback (most recent call last):
        ...
        ValueError: flush_interval unit 'ep' not allowed here; use one of ba.
    """
    examples = ', '.join(f'"{e}"' for u, e in _EXAMPLES if u in units)
    try:
        if isinstance(value, Time):
            t = value
        elif isinstance(value, int) and not isinstance(value, bool):
            t = Time(value, TimeUnit.BATCH)
        elif isinstance(value, str):
            t = Time.from_timestring(value.replace(' ', ''))
        else:
            raise TypeError(type(value).__name__)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{what} must be a Composer time string such as {examples}, or an int number of batches; '
                         f'got {value!r}.') from e
    if t.unit not in units:
        raise ValueError(f'{what} unit {t.unit.value!r} not allowed here; use one of {", ".join(u.value for u in units)}.')
    if t.value < 0:
        raise ValueError(f'{what} must be >= 0, got {value!r}.')
    return t


_EXAMPLES = ((TimeUnit.BATCH, '1000ba'), (TimeUnit.DURATION, '0.05dur'), (TimeUnit.TOKEN, '1000000tok'),
             (TimeUnit.SAMPLE, '100sp'), (TimeUnit.EPOCH, '1ep'))
