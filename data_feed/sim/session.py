"""Matching a replaying client against a recorded `Session` (``data_feed.contracts.capture``): REST by what it asks
for (`http_candidates`), websocket connections by address (`match_connection`) and, between connections at
one address, by the subscription frames the client sends (`closest_by_sends`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from data_feed.contracts.capture import HttpRecord, Session, WsRecord

# Query parameters that only say how much to return: a snapshot of depth 1000 answers a request for 100.
SIZE_PARAMS: Final = frozenset({"limit", "depth", "size", "count", "sz"})
QUERY_TOKEN_SEPARATORS: Final = "/&=,"
VERSION_SEGMENT: Final = re.compile(r"^v\d+(\.\d+)?$")
WORD: Final = re.compile(r"[A-Za-z0-9_.:-]+")


# -- matching ------------------------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    return [seg for seg in path.strip("/").split("/") if seg]


def _stem(segment: str) -> str:
    """A path segment compared across API versions: case-folded, plural to singular (instruments ~ instrument)."""
    word = segment.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _asks_for(query: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if k not in SIZE_PARAMS}


def _path_rank(recorded: str, asked: str) -> tuple[bool, int, int]:
    """How well a recorded path answers an asked one: equal; equal segments from the end (stemmed);
    equal segments anywhere, version segments such as ``v3`` left out (a mount prefix or version differs)."""
    have, want = _segments(recorded), _segments(asked)
    trailing = 0
    for a, b in zip(reversed(have), reversed(want), strict=False):
        if _stem(a) != _stem(b):
            break
        trailing += 1
    plain = {_stem(x) for x in have if not VERSION_SEGMENT.match(x)}
    shared = sum(1 for x in want if not VERSION_SEGMENT.match(x) and _stem(x) in plain)
    return recorded.rstrip("/") == asked.rstrip("/"), trailing, shared


def http_candidates(session: Session, path: str, query: dict[str, str]) -> list[HttpRecord]:
    """Recorded responses answering a request, best first: the same endpoint and the same non-size parameters.

    The endpoint is its last path segment, compared case-folded and singular: recordings come from other
    cryptofeed versions, whose paths differ in a mount prefix, a version or a plural (Coinbase's
    ``/products`` vs ``/market/products``, ``/instruments`` vs ``/instrument``). Among the plausible answers
    the closest path wins; every recorded response with that path and query is returned, in recorded order.
    """
    wanted = _asks_for(query)
    matching = [r for r in session.http if _asks_for(r.query) == wanted and _path_rank(r.path, path)[1] >= 1]
    if not matching:
        return []
    best = max(_path_rank(r.path, path) for r in matching)
    return [r for r in matching if _path_rank(r.path, path) == best]


def recorded_requests(session: Session) -> list[str]:
    """Every distinct recorded request (path and query), for messages about a request with no answer."""
    return list(dict.fromkeys(urlsplit(r.url)._replace(scheme="", netloc="").geturl() for r in session.http))


def _tokens(text: str) -> set[str]:
    for sep in QUERY_TOKEN_SEPARATORS:
        text = text.replace(sep, " ")
    return set(text.split())


def _address_rank(record: WsRecord, path: str, wanted: set[str]) -> tuple[bool, bool, float]:
    have_path, have_query = record.path_and_query
    have = _tokens(have_query)
    union = wanted | have
    similarity = len(wanted & have) / len(union) if union else 1.0
    return have_path == path, have_path.endswith(path) or path.endswith(have_path), similarity


def best_by_address(candidates: Sequence[WsRecord], path: str, query: str) -> list[WsRecord]:
    """Every recorded connection tied for the best match of a client's connect address, in recorded order.

    Ranked by: same path; else one path ending with the other (a mount prefix such as the simulator's
    ``/binance`` differs); then the most similar query (``streams=`` lists in another order still match).
    Several connections to one address (cryptofeed splits a long subscription list) all tie.
    """
    path = path.rstrip("/")
    wanted = _tokens(query)
    ranked = [(_address_rank(c, path, wanted), c) for c in candidates]
    plausible = [(rank, c) for rank, c in ranked if rank[1]]
    if not plausible:
        return []
    best = max(rank for rank, _ in plausible)
    return [c for rank, c in plausible if rank == best]


def match_connection(candidates: Sequence[WsRecord], path: str, query: str) -> WsRecord | None:
    """The recorded connection a client's connect address asks for (the first of several tied)."""
    found = best_by_address(candidates, path, query)
    return found[0] if found else None


def _words(frames: Sequence[str | bytes]) -> set[str]:
    return set(WORD.findall(" ".join(f if isinstance(f, str) else f.decode("latin-1") for f in frames)))


def closest_by_sends(candidates: Sequence[WsRecord], sends: Sequence[str | bytes]) -> WsRecord | None:
    """Among recorded connections to one address, the one whose recorded client frames (subscriptions)
    share the most words with what the client sent (Jaccard over words: channel and symbol names)."""
    if not candidates:
        return None
    wanted = _words(sends)

    def similarity(c: WsRecord) -> float:
        have = _words(c.sends)
        union = wanted | have
        return len(wanted & have) / len(union) if union else 1.0

    return max(candidates, key=similarity)
