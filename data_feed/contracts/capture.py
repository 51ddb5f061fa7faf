"""Recorded exchange sessions: the capture format, read and written in one place, and the replay envelope.

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

Neutral ground between the recorder, the collectors and the simulator: `data_feed.collector.recorder` writes these
records, `data_feed.sim.session` matches a replaying client's requests against a loaded `Session`, and the
replay envelope (how the replay server wraps each served frame and how a collector acknowledges it) is
defined here too, so a live collector imports nothing of the simulator.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import zstandard

LOG = logging.getLogger(__name__)

FORMAT_VERSION: Final = 2
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


# -- writing (the recorder) ----------------------------------------------------------------------


def header_record(exchange: str, config: dict[str, list[str]], candle_interval: str | None,
                  recorded: float) -> dict[str, Any]:
    return {"t": "header", "format": FORMAT_VERSION, "exchange": exchange, "config": config,
            "candle_interval": candle_interval, "recorded": recorded}


# -- the replay envelope (one definition for the replay server and data-feed's collectors) ---------------

# The envelope: a client sending this header gets every frame as MARK + "<recorded ts> <index> <ack 0|1>" +
# MARK + frame (bytes for binary frames), and acknowledges with a text frame MARK + "ack <index>".
ENVELOPE_HEADER: Final = "X-Data-Feed-Replay-Envelope"
ENVELOPE_MARK: Final = "\x1e"
ACK_WORD: Final = "ack"


REPLAY_PATH_PREFIX: Final = "/replay"  # the replay server serves exchange X under /replay/X


def replay_prefix(exchange: str) -> str:
    return f"{REPLAY_PATH_PREFIX}/{exchange}"


def wrap_frame(data: str | bytes, recorded_ts: float, index: int, ack: bool) -> str | bytes:
    head = f"{ENVELOPE_MARK}{recorded_ts!r} {index} {int(ack)}{ENVELOPE_MARK}"
    return head + data if isinstance(data, str) else head.encode() + data


def unwrap_frame(frame: str | bytes) -> tuple[str | bytes, float, int, bool] | None:
    """(frame, recorded ts, index, ack wanted) of an enveloped frame; None for a frame without an envelope."""
    mark: Any = ENVELOPE_MARK if isinstance(frame, str) else ENVELOPE_MARK.encode()
    if frame[:1] != mark:
        return None
    end = frame.find(mark, 1)
    head = frame[1:end]
    ts, index, ack = (head if isinstance(head, str) else head.decode()).split()
    return frame[end + 1 :], float(ts), int(index), ack == "1"


def ack_frame(index: int) -> str:
    return f"{ENVELOPE_MARK}{ACK_WORD} {index}"


def parse_ack(frame: str | bytes) -> int | None:
    if isinstance(frame, str) and frame.startswith(ENVELOPE_MARK + ACK_WORD + " "):
        return int(frame.split()[1])
    return None
