"""``--log-format json``: one JSON object a line with time, level, role, message, and exchange, channel and
symbol from the call's ``extra``, from the message, or from the process; tracebacks inside the line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from data_feed.observability.logs import LOG_FORMAT_ENV, JsonFormatter, log_format


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("data_feed.test", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_line_has_time_level_role_message_and_the_context_the_message_names() -> None:
    line = JsonFormatter("aggregator").format(record("exchange=%s channel=%s symbol=%s: %d records late", "BINANCE",
                                                     "trades", "BTC-USDT", 3))
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["role"] == "aggregator" and out["logger"] == "data_feed.test"
    assert out["message"] == "exchange=BINANCE channel=trades symbol=BTC-USDT: 3 records late"
    assert (out["exchange"], out["channel"], out["symbol"]) == ("BINANCE", "trades", "BTC-USDT")
    assert out["time"].endswith("Z") and "T" in out["time"]


def test_extra_fields_win_over_the_message_and_the_process_fills_in_its_exchange() -> None:
    formatter = JsonFormatter("collector-BINANCE", {"exchange": "BINANCE"})
    out = json.loads(formatter.format(record("channel=ticker: resubscribed", symbol="ETH-USDT", channel="l2_book")))
    assert (out["exchange"], out["channel"], out["symbol"]) == ("BINANCE", "l2_book", "ETH-USDT")


def test_a_stream_key_or_a_collector_role_names_the_exchange() -> None:
    out = json.loads(JsonFormatter("aggregator").format(record("stream df:stream:COINBASE:l2_book entry 1-0: bad")))
    assert (out["exchange"], out["channel"]) == ("COINBASE", "l2_book") and "symbol" not in out
    out = json.loads(JsonFormatter("spawner").format(record("collector OKX (pid 7) exited with code -9")))
    assert out["exchange"] == "OKX" and "channel" not in out


def test_a_traceback_stays_inside_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter("featurizer").format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_an_unknown_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "yaml")
    with pytest.raises(ValueError, match="yaml"):
        log_format()


def test_an_uncaught_exception_is_a_json_line_too() -> None:
    code = ("from data_feed.observability.logs import setup_logging; setup_logging('spawner'); "
            "raise RuntimeError('at start')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, LOG_FORMAT_ENV: "json"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    out = json.loads(lines[0])
    assert out["level"] == "CRITICAL" and "RuntimeError: at start" in out["exception"]
