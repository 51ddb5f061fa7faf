"""Recorded exchange sessions: the capture format, read and written in one place.

A session file is JSON Lines (optionally zstd-compressed, ``.zst``), one record per line, each with ``t``::

    {"t": "header", "format": 2, "exchange": "BINANCE", "config": {"trades": ["BTC-USDT"]},
     "candle_interval": null, "recorded": 1633998511.13}
    {"t": "http", "conn": "BINANCE.http.0", "ts": 1633998512.32,
     "url": "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000", "data": "{\\"lastUpdateId\\": 1}"}
    {"t": "connect", "conn": "BINANCE.ws.1", "ts": 1633998511.16, "addr": "wss://stream.binance.com:9443/stream?..."}
    {"t": "send", "conn": "BYBIT.ws.2", "ts": 1786310819.22, "addr": "wss://...", "data": "{\\"op\\": \\"subscribe\\"}"}
    {"t": "recv", "conn": "BINANCE.ws.1", "ts": 1633998512.06, "data": "{\\"stream\\": ...}"}

The replay server matches requests against a `Session`: REST by what they ask for (`match_http`), websocket
connections by address and subscription frames (`match_connection`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
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
    sends: list[str] = field(default_factory=list)
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

    @property
    def first_ts(self) -> float:
        times = [c.frames[0][0] for c in self.connections if c.frames]
        return min(times) if times else 0.0


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as raw:
        if path.suffix == ".zst":
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            yield from io.TextIOWrapper(reader, encoding="utf-8")
        else:
            yield from io.TextIOWrapper(raw, encoding="utf-8")


def load_session(path: str | Path) -> Session:
    """Read a session file; raises SessionError with file and line on anything malformed."""
    path = Path(path)
    header: dict[str, Any] | None = None
    http: list[HttpRecord] = []
    conns: dict[str, WsRecord] = {}
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            kind = rec["t"]
            if kind == "header":
                header = rec
            elif kind == "http":
                http.append(HttpRecord(float(rec["ts"]), rec["url"], rec["data"]))
            elif kind in ("connect", "send", "recv"):
                _add_ws(conns.setdefault(rec["conn"], WsRecord(rec["conn"])), kind, rec)
        except (ValueError, KeyError, TypeError) as err:
            raise SessionError(f"{path}:{number}: bad record ({type(err).__name__}: {err})") from None
    if header is None:
        raise SessionError(f"{path}: no header record")
    return Session(path, str(header["exchange"]), dict(header.get("config") or {}), header.get("candle_interval"),
                   http, list(conns.values()))


def _add_ws(ws: WsRecord, kind: str, rec: dict[str, Any]) -> None:
    if kind == "connect":
        ws.addr, ws.connected_at = rec["addr"], float(rec["ts"])
    elif kind == "send":
        ws.addr = ws.addr or rec.get("addr", "")
        ws.sends.append(str(rec["data"]))
    else:
        data = rec["data"] if "data" in rec else base64.b64decode(rec["data_b64"])
        ws.frames.append((float(rec["ts"]), data))


# -- matching ------------------------------------------------------------------------------------


def _last_segment(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _asks_for(query: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if k not in SIZE_PARAMS}


def http_candidates(session: Session, path: str, query: dict[str, str]) -> list[HttpRecord]:
    """Recorded responses answering a request: same endpoint kind (last path segment), same non-size parameters.

    Exact path matches are preferred; paths may differ between cryptofeed versions (Coinbase's
    ``/products`` vs ``/market/products``), so the endpoint's last segment is what must agree.
    """
    wanted = _asks_for(query)
    same_kind = [r for r in session.http if _last_segment(r.path) == _last_segment(path)]
    matching = [r for r in same_kind if _asks_for(r.query) == wanted]
    exact = [r for r in matching if r.path == path]
    return exact or matching


def _tokens(text: str) -> set[str]:
    for sep in QUERY_TOKEN_SEPARATORS:
        text = text.replace(sep, " ")
    return set(text.split())


def match_connection(candidates: Sequence[WsRecord], path: str, query: str) -> WsRecord | None:
    """The recorded connection a client's connect address asks for.

    Ranked by: same path; else one path ending with the other (a mount prefix such as the simulator's
    ``/binance`` differs); then the most similar query (``streams=`` lists in another order still match).
    """
    if not candidates:
        return None
    path = path.rstrip("/")
    wanted = _tokens(query)

    def rank(c: WsRecord) -> tuple[bool, bool, float]:
        have_path, have_query = c.path_and_query
        have = _tokens(have_query)
        union = wanted | have
        similarity = len(wanted & have) / len(union) if union else 1.0
        return have_path == path, have_path.endswith(path) or path.endswith(have_path), similarity

    best = max(candidates, key=rank)
    return best if rank(best)[1] else None


# -- writing (the recorder) ----------------------------------------------------------------------


def header_record(exchange: str, config: dict[str, list[str]], candle_interval: str | None,
                  recorded: float) -> dict[str, Any]:
    return {"t": "header", "format": FORMAT_VERSION, "exchange": exchange, "config": config,
            "candle_interval": candle_interval, "recorded": recorded}
