"""Instants as users type and read them: the lake's int64 nanoseconds UTC to and from text.

Users give times as ISO-8601 (UTC unless zoned) or epoch seconds; every message and table shows them
as UTC ISO-8601 with a ``Z``, never as raw nanoseconds. Kept free of heavy imports (the CLI uses it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from data_feed.contracts.schemas import NS_PER_SECOND

INT64_MAX = 2**63 - 1
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86_400
SHORT_AGE_SECONDS = 10  # below this, ages are shown to the millisecond
_FRACTION_DIGITS = (  # (unit in ns, digits shown): the coarsest unit that holds every value exactly
    (NS_PER_SECOND, 0), (1_000_000, 3), (1000, 6), (1, 9))


def parse_instant(text: str) -> int:
    """Epoch nanoseconds of ISO-8601 (UTC unless it names a zone) or of epoch seconds."""
    try:
        return round(float(text) * 1e6) * 1000
    except (ValueError, OverflowError):
        pass
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected ISO-8601 (2024-05-01T12:00:00) or epoch seconds") from None
    if stamp is pd.NaT:
        raise ValueError(f"{text!r}: expected ISO-8601 (2024-05-01T12:00:00) or epoch seconds")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)


def fraction_digits(values_ns: list[int]) -> int:
    """Fractional digits that show every one of ``values_ns`` exactly: 0, 3, 6 or 9."""
    for unit, digits in _FRACTION_DIGITS:
        if all(v % unit == 0 for v in values_ns):
            return digits
    return 9


def format_instant(ns: int, digits: int | None = None) -> str:
    """``2024-05-01T12:00:00.123456Z``: UTC, with ``digits`` fractional digits (default: as many as needed to
    be exact). An instant outside the calendar (e.g. epoch seconds 1e30) is shown as epoch seconds."""
    if digits is None:
        digits = fraction_digits([ns])
    seconds, frac = divmod(ns, NS_PER_SECOND)
    try:
        base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"epoch second {ns / NS_PER_SECOND:g}"
    return base + (f".{frac:09d}"[: digits + 1] if digits else "") + "Z"


def format_age(ns: int) -> str:
    """A duration for people: ``0.008 s``, ``37.2 s``, ``12.5 min``, ``3.0 h``, ``4.2 days``."""
    seconds = ns / NS_PER_SECOND
    if abs(seconds) < SHORT_AGE_SECONDS:
        return f"{seconds:.3f} s"
    if abs(seconds) < 2 * SECONDS_PER_MINUTE:
        return f"{seconds:.1f} s"
    if abs(seconds) < 2 * SECONDS_PER_HOUR:
        return f"{seconds / SECONDS_PER_MINUTE:.1f} min"
    if abs(seconds) < 2 * SECONDS_PER_DAY:
        return f"{seconds / SECONDS_PER_HOUR:.1f} h"
    return f"{seconds / SECONDS_PER_DAY:,.1f} days"
