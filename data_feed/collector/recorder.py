"""Recorder: writes a collector's raw exchange session (REST responses, every websocket frame) to a session file.

It is cryptofeed's raw-data hook (``Connection.raw_data_callback``): every connection calls it with what
it sent, received or fetched, and the local time. Records follow the capture format of
`data_feed.contracts.capture` (header, http, connect, send, recv), so `data-feed replay` serves them back.
The hook is class-level state in cryptofeed; a collector process serves one exchange, so one recorder
per process is exact.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import zstandard

from data_feed.contracts.capture import header_record
from data_feed.contracts.config import Config, parse_config
from data_feed.lake.layout import STAMP_FORMAT

LOG = logging.getLogger("data_feed.collector")

SESSION_SUFFIX: Final = ".jsonl.zst"
ZSTD_LEVEL: Final = 3
FLUSH_EVERY_RECORDS: Final = 1000  # bounds what a crash can lose from the file's tail


def recording_config(cfg: Config, directory: Path) -> Config:
    """``cfg`` with every exchange recording its raw session into ``directory``."""
    data = cfg.model_dump(mode="json")
    for ex in data["exchanges"].values():
        ex["record"] = str(Path(directory).resolve())
    return parse_config(data, "record")


def session_path(directory: Path, exchange: str, started: float) -> Path:
    stamp = datetime.fromtimestamp(started, UTC).strftime(STAMP_FORMAT)
    return directory / f"{exchange}-{stamp}{SESSION_SUFFIX}"


class SessionRecorder:
    """cryptofeed raw-data callback writing the capture format; ``close()`` ends the zstd frame."""

    def __init__(self, directory: str | Path, exchange: str, config: dict[str, list[str]],
                 candle_interval: str | None = None) -> None:
        started = time.time()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = session_path(directory, exchange, started)
        self.exchange = exchange
        self._raw: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 - open for the session's life
        self._out = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._raw)
        self._since_flush = 0
        self.records = 0
        self._write(header_record(exchange, config, candle_interval, started))
        LOG.info("exchange=%s: recording the raw session to %s", exchange, self.path)

    # -- cryptofeed's hook interface -------------------------------------------------------------

    async def __call__(self, data: Any, timestamp: float, uuid: str, endpoint: str | None = None,
                       send: str | None = None, connect: str | None = None, header: Any = None) -> None:
        if connect is not None:
            self._write({"t": "connect", "conn": uuid, "ts": timestamp, "addr": connect})
        elif send is not None:
            self._write({"t": "send", "conn": uuid, "ts": timestamp, "addr": send, **_payload(data)})
        elif endpoint is not None:
            self._write({"t": "http", "conn": uuid, "ts": timestamp, "url": endpoint, **_payload(data)})
        else:
            self._write({"t": "recv", "conn": uuid, "ts": timestamp, **_payload(data)})

    def sync_callback(self, data: Any, timestamp: float, uuid: str, endpoint: str | None = None) -> None:
        """Synchronous REST (cryptofeed's symbol lists at start-up)."""
        conn = uuid if "." in uuid else f"{uuid}.http.sync"
        self._write({"t": "http", "conn": conn, "ts": timestamp, "url": endpoint, **_payload(data)})

    # -- file ------------------------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        if self._out.closed:
            return
        self._out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.records += 1
        self._since_flush += 1
        if self._since_flush >= FLUSH_EVERY_RECORDS:
            self._out.flush(zstandard.FLUSH_BLOCK)
            self._since_flush = 0

    def close(self) -> None:
        if not self._out.closed:
            self._out.flush(zstandard.FLUSH_FRAME)
            self._out.close()  # type: ignore[no-untyped-call]
            LOG.info("exchange=%s: recorded %d records to %s", self.exchange, self.records, self.path)


def _payload(data: Any) -> dict[str, Any]:
    """Text frames as text; binary frames (compressed exchanges) as base64 of their exact bytes under ``b64``."""
    if isinstance(data, bytes | bytearray):
        return {"b64": base64.b64encode(bytes(data)).decode()}
    return {"data": data}
