"""Topic patterns: how datasets and scopes name the streams and lake rows they cover.

A pattern has the shape of a bus topic (``bus.py``): ``features.{interval}.{exchange}.{symbol}`` or
``{channel}.{exchange}.{symbol}``, each part an fnmatch pattern (``features.1s.BINANCE.*``,
``trades.*.BTC-USDT``). A scope of ``*`` is the whole dataset. A topic is covered by a grant when it
matches both the dataset's pattern and the permission's scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from data_feed.bus.wire import TOPIC_SEPARATOR
from data_feed.contracts.config import FEATURES_CHANNEL
from data_feed.contracts.schemas import LAKE_CHANNELS

WHOLE = "*"


class PatternError(ValueError):
    """A pattern that cannot name any topic."""


@dataclass(frozen=True)
class Parts:
    """A pattern (or topic) split into its fields; ``interval`` is None for market-data channels."""

    channel: str
    interval: str | None
    exchange: str
    symbol: str


def split(pattern: str) -> Parts:
    parts = pattern.split(TOPIC_SEPARATOR)
    if parts and parts[0] == FEATURES_CHANNEL and len(parts) == 4:
        return Parts(parts[0], parts[1], parts[2], parts[3])
    if len(parts) == 3 and parts[0] != FEATURES_CHANNEL:
        return Parts(parts[0], None, parts[1], parts[2])
    raise PatternError(f"pattern {pattern!r}: expected features.INTERVAL.EXCHANGE.SYMBOL or "
                       "CHANNEL.EXCHANGE.SYMBOL (each part may use * and ?)")


def check_pattern(pattern: str) -> None:
    if pattern == WHOLE:
        return
    parts = split(pattern)
    if parts.channel not in LAKE_CHANNELS:
        raise PatternError(f"pattern {pattern!r}: unknown channel {parts.channel!r}; known: {', '.join(LAKE_CHANNELS)}")


def matches(pattern: str, topic: str) -> bool:
    """Whether a concrete topic (``features.1s.BINANCE.BTC-USDT``) is covered by ``pattern``."""
    if pattern == WHOLE:
        return True
    want, got = pattern.split(TOPIC_SEPARATOR), topic.split(TOPIC_SEPARATOR)
    return len(want) == len(got) and all(fnmatchcase(g, w) for w, g in zip(want, got, strict=True))


def covered(topic: str, dataset_pattern: str, scope: str) -> bool:
    return matches(dataset_pattern, topic) and matches(scope, topic)


def may_overlap(prefix: str, pattern: str) -> bool:
    """Whether some topic starting with ``prefix`` (a ZMQ subscription) could match ``pattern``: each complete
    part of the prefix must match, and its last, partial part must be able to start a match."""
    if pattern == WHOLE:
        return True
    want = pattern.split(TOPIC_SEPARATOR)
    got = prefix.split(TOPIC_SEPARATOR)
    if len(got) > len(want):
        return False
    *whole, partial = got
    if not all(fnmatchcase(g, w) for w, g in zip(want, whole, strict=False)):
        return False
    target = want[len(whole)]
    return fnmatchcase(partial, target) or fnmatchcase(partial + "*", target) or _can_start(partial, target)


def _can_start(partial: str, pattern: str) -> bool:
    """Whether the text ``partial`` can be the start of a string matching ``pattern`` (simple * and ?)."""
    for i, ch in enumerate(pattern):
        if ch == "*":
            return True
        if i >= len(partial):
            return True
        if ch != "?" and ch != partial[i]:
            return False
    return len(partial) <= len(pattern)
