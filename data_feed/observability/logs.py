"""Logging set-up shared by every process: one line per event, role and context in every line.

Two formats: ``text`` (the default, for people) and ``json`` (one JSON object per line, for Loki-style
collection): ``time`` (UTC, ISO-8601), ``level``, ``role``, ``pid``, ``logger``, ``message`` and, where
known, ``exchange``, ``channel`` and ``symbol``. Those come from the log call's ``extra``, else from the
message (the code writes them as ``exchange=X channel=Y symbol=Z``, or names a stream key or a collector
role), else from the process (a collector's exchange). ``data-feed run --log-format json`` sets
``LOG_FORMAT_ENV``, which every role the spawner starts inherits.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from types import TracebackType
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s [{role} pid=%(process)d] %(name)s: %(message)s"
LOG_FORMAT_ENV = "DATA_FEED_LOG_FORMAT"  # text | json; inherited by every role the spawner starts
LOG_FORMATS = ("text", "json")
CONTEXT_FIELDS = ("exchange", "channel", "symbol")
_CONTEXT_IN_MESSAGE = re.compile(r"\b(exchange|channel|symbol)=([^\s,;:()]+)")
_COLLECTOR_IN_MESSAGE = re.compile(r"\bcollector ([A-Z][A-Z0-9_]+)\b")


def log_format() -> str:
    """The format this process logs in: ``LOG_FORMAT_ENV``, or text."""
    chosen = os.environ.get(LOG_FORMAT_ENV, "text")
    if chosen not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={chosen!r}: expected one of {', '.join(LOG_FORMATS)}")
    return chosen


def setup_logging(role: str, level: str | None = None, exchange: str | None = None) -> None:
    """Log to stderr (the spawner sends each child's stderr to its own file); ``exchange``: the one this
    process serves (a collector), for the lines that do not name one."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format() == "json":
        handler.setFormatter(JsonFormatter(role, {"exchange": exchange} if exchange else {}))
        _log_uncaught(role)
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT.format(role=role)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("DATA_FEED_LOG_LEVEL", "INFO"))
    # cryptofeed logs every reconnect at WARNING with context (conn id); keep it, but not its debug chatter
    logging.getLogger("feedhandler").setLevel(logging.INFO)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a traceback is a field of it, never lines of its own."""

    def __init__(self, role: str, context: dict[str, str] | None = None) -> None:
        super().__init__()
        from data_feed.cache.streams import STREAM_KEY_PREFIX  # here: the text format keeps start-up light

        self.role = role
        self.context = context or {}
        self._stream_key = re.compile(re.escape(STREAM_KEY_PREFIX) + r":([A-Z0-9_]+):([a-z0-9_]+)")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {"time": _utc(record.created), "level": record.levelname, "role": self.role,
                               "pid": record.process, "logger": record.name, "message": message}
        out.update(self.fields(record, message))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)

    def fields(self, record: logging.LogRecord, message: str) -> dict[str, str]:
        """exchange, channel and symbol: the call's ``extra`` first, then the message, then the process."""
        found = dict(_CONTEXT_IN_MESSAGE.findall(message))
        stream = self._stream_key.search(message)
        if stream is not None:
            found.setdefault("exchange", stream.group(1))
            found.setdefault("channel", stream.group(2))
        collector = _COLLECTOR_IN_MESSAGE.search(message)  # the spawner's lines about a collector role
        if collector is not None:
            found.setdefault("exchange", collector.group(1))
        out = {}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or found.get(name) or self.context.get(name)
            if value:
                out[name] = str(value)
        return out


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _log_uncaught(role: str) -> None:
    """Uncaught exceptions (main thread and others) and warnings as log records, so that they are JSON too."""
    log = logging.getLogger("data_feed")
    logging.captureWarnings(True)

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        log.critical("%s: uncaught %s: %s", role, kind.__name__, value, exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log.critical("%s: uncaught %s in thread %s: %s", role, args.exc_type.__name__,
                         args.thread.name if args.thread else "?", args.exc_value,
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = hook
    threading.excepthook = thread_hook
