"""Recorded exchange sessions: the capture format, read and written in one place.

A session file is JSON Lines (optionally zstd-compressed, ``.zst``), one record per line, each with ``t``::

    {"t": "header", "format": 2, "exchange": "BINANCE", "config": {"trades": ["BTC-USDT"]},
     "candle_interval": null, "recorded": 1633998511.13}
    {"t": "http", "conn": "BINANCE.http.0", "ts": 1633998512.32,
     "url": "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000", "data": "{\\"lastUpdateId\\": 1}"}
    {"t": "connect", "conn": "BINANCE.ws.1", "ts": 1633998511.16, "addr": "wss://stream.binance.com:9443/stream?..."}
    {"t": "send", "conn": "BYBIT.ws.2", "ts": 1786310819.22, "addr": "wss://...", "data": "{\\"op\\": \\"subscribe\\"}"}
    {"t": "recv", "conn": "BINANCE.ws.1", "ts": 1633998512.06, "data": "{\\"stream\\": ...}"}
    {"t": "recv", "conn": "HUOBI.ws.1", "ts": 1633998512.07, "b64": "H4sIAAAAAAAA..."}

A binary frame (gzip or deflate, as Huobi- and OKX-style venues send) is kept as base64 of its exact bytes
under ``b64`` (``data_b64`` in files written by earlier versions of the recorder).

The replay server matches requests against a `Session`: REST by what they ask for (`http_candidates`),
websocket connections by address (`match_connection`) and, between connections at one address, by the
subscription frames the client sends (`closest_by_sends`).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import zstandard

LOG = logging.getLogger(__name__)

FORMAT_VERSION: Final = 2
# Query parameters that only say how much to return: a snapshot of depth 1000 answers a request for 100.
SIZE_PARAMS: Final = frozenset({"limit", "depth", "size", "count", "sz"})
QUERY_TOKEN_SEPARATORS: Final = "/&=,"
VERSION_SEGMENT: Final = re.compile(r"^v\d+(\.\d+)?$")
WORD: Final = re.compile(r"[A-Za-z0-9_.:-]+")
RECORD_EXCERPT_CHARS: Final = 80


class SessionError(ValueError):
    """A session file that cannot be used; names the file and line."""


@dataclass
class HttpRecord:
    ts: float
    url: str
    data: str
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.path = parts.path
        self.query = dict(parse_qsl(parts.query))


@dataclass
class WsRecord:
    """One recorded websocket connection: where it went, what the client sent, what the exchange sent."""

    conn: str
    addr: str = ""
    connected_at: float = 0.0
    sends: list[str | bytes] = field(default_factory=list)
    frames: list[tuple[float, str | bytes]] = field(default_factory=list)

    @property
    def path_and_query(self) -> tuple[str, str]:
        parts = urlsplit(self.addr)
        return parts.path.rstrip("/"), parts.query


@dataclass
class Session:
    path: Path
    exchange: str
    config: dict[str, list[str]]
    candle_interval: str | None
    http: list[HttpRecord]
    connections: list[WsRecord]

    @property
    def frames_total(self) -> int:
        return sum(len(c.frames) for c in self.connections)

    def frame_order(self) -> list[tuple[float, int, int]]:
        """(recorded ts, connection index, frame index) of every frame, in the order they were recorded in:
        connections merged by receive time (ties: place in the connection, then its name), each in its order."""
        per_connection = [[(ts, j, c.conn, ci) for j, (ts, _) in enumerate(c.frames)]
                          for ci, c in enumerate(self.connections)]
        return [(ts, ci, j) for ts, j, _, ci in heapq.merge(*per_connection)]

    @property
    def first_ts(self) -> float:
        times = [c.frames[0][0] for c in self.connections if c.frames]
        return min(times) if times else 0.0

    @property
    def last_ts(self) -> float:
        times = [c.frames[-1][0] for c in self.connections if c.frames]
        return max(times) if times else 0.0


def _raw_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if path.suffix == ".zst":
            yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))  # type: ignore[arg-type]
        else:
            yield from raw


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line); a file that cannot be decompressed or decoded is a SessionError at its line."""
    number = 0
    try:
        for number, raw in enumerate(_raw_lines(path), 1):
            yield number, raw.decode("utf-8")
    except zstandard.ZstdError as err:
        raise SessionError(f"{path}:{number + 1}: not a session file: cannot read it as zstd-compressed "
                           f"JSON Lines ({err})") from None
    except UnicodeDecodeError as err:
        raise SessionError(f"{path}:{number}: not a session file: the line is not UTF-8 text ({err})") from None


def load_session(path: str | Path) -> Session:
    """Read a session file; raises SessionError with file and line on anything malformed."""
    path = Path(path)
    header: dict[str, Any] | None = None
    http: list[HttpRecord] = []
    conns: dict[str, WsRecord] = {}
    try:
        for number, line in _numbered_lines(path):
            if not line.strip():
                continue
            header = _add_record(path, number, line, header, http, conns)
    except OSError as err:
        raise SessionError(f"{path}: cannot read the session file ({err.strerror or err})") from None
    if header is None:
        raise SessionError(f"{path}: no header record (a first line {{\"t\": \"header\", ...}})")
    return Session(path, header["exchange"], header["config"], header.get("candle_interval"), http,
                   list(conns.values()))


def read_exchange(path: str | Path) -> str:
    """The exchange a session file records, from its header (the first record), without reading the rest."""
    path = Path(path)
    try:
        for number, line in _numbered_lines(path):
            if line.strip():
                header = _add_record(path, number, line, None, [], {})
                if header is None:
                    raise SessionError(f"{path}:{number}: the first record is not the header")
                return str(header["exchange"])
    except OSError as err:
        raise SessionError(f"{path}: cannot read the session file ({err.strerror or err})") from None
    raise SessionError(f"{path}: no header record (a first line {{\"t\": \"header\", ...}})")


def _add_record(path: Path, number: int, line: str, header: dict[str, Any] | None, http: list[HttpRecord],
                conns: dict[str, WsRecord]) -> dict[str, Any] | None:
    """One line into the session being read; returns the header (this line's, when it is one)."""
    try:
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise TypeError(f"a record is a JSON object, not {type(rec).__name__}")
        kind = rec["t"]
        if kind == "header":
            return _header(rec)
        if kind == "http":
            http.append(HttpRecord(float(rec["ts"]), str(rec["url"]), str(rec["data"])))
        elif kind in ("connect", "send", "recv"):
            _add_ws(conns.setdefault(str(rec["conn"]), WsRecord(str(rec["conn"]))), kind, rec)
    except (ValueError, KeyError, TypeError) as err:
        excerpt = line.strip()[:RECORD_EXCERPT_CHARS]
        raise SessionError(f"{path}:{number}: bad record ({type(err).__name__}: {err}): {excerpt!r}") from None
    return header


def _header(rec: dict[str, Any]) -> dict[str, Any]:
    exchange, config = rec["exchange"], rec.get("config") or {}
    if not isinstance(exchange, str) or not exchange:
        raise TypeError("the header's exchange must be a name such as BINANCE")
    if not isinstance(config, dict) or not all(isinstance(v, list) for v in config.values()):
        raise TypeError("the header's config must map each channel to a list of symbols")
    return {**rec, "config": {str(k): [str(x) for x in v] for k, v in config.items()}}


def _add_ws(ws: WsRecord, kind: str, rec: dict[str, Any]) -> None:
    if kind == "connect":
        ws.addr, ws.connected_at = str(rec["addr"]), float(rec["ts"])
    elif kind == "send":
        ws.addr = ws.addr or str(rec.get("addr", ""))
        ws.sends.append(str(rec["data"]) if "data" in rec else _binary(rec))
    else:
        ws.frames.append((float(rec["ts"]), str(rec["data"]) if "data" in rec else _binary(rec)))


def _binary(rec: dict[str, Any]) -> bytes:
    """A binary frame's exact bytes, from ``b64`` (``data_b64`` in earlier recordings)."""
    key = "b64" if "b64" in rec else "data_b64"
    try:
        return base64.b64decode(rec[key], validate=True)
    except binascii.Error as err:
        raise ValueError(f"{key} is not base64 ({err})") from None


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


# -- writing (the recorder) ----------------------------------------------------------------------


def header_record(exchange: str, config: dict[str, list[str]], candle_interval: str | None,
                  recorded: float) -> dict[str, Any]:
    return {"t": "header", "format": FORMAT_VERSION, "exchange": exchange, "config": config,
            "candle_interval": candle_interval, "recorded": recorded}
