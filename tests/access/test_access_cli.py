"""``data-feed access`` and ``data-feed query --as`` as a user runs them: secrets shown once and kept nowhere,
one-line errors with exit 2, an audit with who and when, and queries answering only granted rows."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from data_feed.cli import app
from tests.conftest import default_config_dict, make_config
from tests.lakes import T0, land, trade_rows

runner = CliRunner()


def _config(tmp_path: Path, lake: Path | None = None) -> Path:
    data = default_config_dict()
    data["database"]["url"] = f"sqlite:///{tmp_path / 'df.db'}"
    data["spawner"]["run_dir"] = str(tmp_path / "run")
    data["lake"]["root"] = str(lake or tmp_path / "lake")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def access(cfg: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["access", *args, "--config", str(cfg)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_secrets_printed_once_never_stored_nor_logged_and_audit_has_who_and_when(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = _config(tmp_path)
    code, out = access(cfg, "consumer", "add", "alice", "--by", "ops")
    assert code == 0, out
    secret = re.search(r"secret key:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    token = re.search(r"token:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    code, out = access(cfg, "consumer", "rotate", "alice", "--by", "ops")
    secret2 = re.search(r"secret key:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    assert code == 0 and secret2 != secret
    assert access(cfg, "dataset", "add", "binance", "features.1s.BINANCE.*")[0] == 0
    for step in (("request", "alice", "binance", "--by", "alice"),
                 ("grant", "alice", "binance", "--by", "boss", "--for", "3600", "--reason", "paid"),
                 ("revoke", "alice", "binance", "--by", "boss", "--reason", "unpaid")):
        code, out = access(cfg, *step)
        assert code == 0, out
    code, out = access(cfg, "consumer", "disable", "alice", "--by", "boss")
    assert code == 0, out
    code, out = access(cfg, "audit")
    lines = out.strip().splitlines()
    assert [re.search(r"to_status=(\S+)", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "ADDED", "ROTATED", "REQUESTED", "GRANTED", "REVOKED", "DISABLED"]
    assert "actor=boss" in lines[3] and "reason=paid" in lines[3] and "from_status=GRANTED" in lines[4]
    assert all(re.search(r"at=\d{4}-\d\d-\d\dT", line) for line in lines)
    database = (tmp_path / "df.db").read_bytes()
    logs = caplog.text
    for clear in (secret, token, secret2):
        assert clear.encode() not in database
        assert clear not in logs


@pytest.mark.parametrize(("args", "message"), [
    (("request", "nobody", "binance"), "error: unknown consumer 'nobody'"),
    (("request", "alice", "nothing"), "error: unknown dataset 'nothing'"),
    (("grant", "alice", "binance"), "error: alice on binance: no permission -> GRANTED is not allowed"),
    (("consumer", "add", "alice"), "error: consumer 'alice' exists already"),
    (("dataset", "add", "x", "nochannel.A.B"), "error: pattern 'nochannel.A.B': unknown channel"),
])
def test_unknown_names_and_forbidden_transitions_are_one_line_errors_with_exit_2(
        tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    cfg = _config(tmp_path)
    access(cfg, "consumer", "add", "alice")
    access(cfg, "dataset", "add", "binance", "features.1s.BINANCE.*")
    code, out = access(cfg, *args)
    assert code == 2
    assert out.strip().startswith(message) and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, redis_server: object) -> Path:
    tmp = tmp_path_factory.mktemp("query-as")
    cfg = make_config(tmp, lake={"slice_seconds": 10, "allowed_lateness_seconds": 0})
    url = redis_server.url  # type: ignore[attr-defined]
    for exchange, symbol in (("BINANCE", "BTC-USDT"), ("BINANCE", "ETH-USDT"), ("COINBASE", "BTC-USD")):
        land(cfg, url, exchange, "trades", trade_rows(symbol, 50))
    return Path(cfg.lake.root)


def query_as(cfg: Path, sql: str, consumer: str = "alice") -> tuple[int, str]:
    result = runner.invoke(app, ["query", sql, "--as", consumer, "--format", "csv", "--config", str(cfg)])
    return result.exit_code, result.output


def test_query_as_answers_granted_rows_only_and_refuses_the_rest(tmp_path: Path, lake: Path) -> None:
    cfg = _config(tmp_path, lake)
    access(cfg, "consumer", "add", "alice")
    access(cfg, "consumer", "add", "carol")
    access(cfg, "dataset", "add", "binance-trades", "trades.BINANCE.*")
    access(cfg, "request", "alice", "binance-trades")
    access(cfg, "grant", "alice", "binance-trades", "--scope", "trades.*.BTC-*")
    code, out = query_as(cfg, "SELECT exchange, symbol, count(*) AS n FROM trades GROUP BY ALL ORDER BY 1, 2")
    assert code == 0, out
    assert out.strip().splitlines() == ["exchange,symbol,n", "BINANCE,BTC-USDT,50"]
    refusals = {
        "SELECT * FROM trades WHERE exchange = 'COINBASE'": "consumer alice is not granted exchange = 'COINBASE'",
        "SELECT * FROM trades WHERE symbol IN ('ETH-USDT')": "consumer alice is not granted symbol = 'ETH-USDT'",
        "SELECT * FROM l2_book": "consumer alice is not granted table 'l2_book'",
        f"SELECT * FROM read_parquet('{lake}/trades/**/*.parquet')": "is not a lake table it may query",
        f"SELECT * FROM '{lake}/trades/x.parquet'": "is not a lake table it may query",
    }
    for sql, message in refusals.items():
        code, out = query_as(cfg, sql)
        assert code != 0 and message in out, (sql, out)
    code, out = query_as(cfg, "SELECT 1 FROM trades", "carol")
    assert code == 2 and "consumer carol has no GRANTED" in out
    code, out = query_as(cfg, "SELECT 1 FROM trades", "nobody")
    assert code == 2 and "unknown consumer 'nobody'" in out


def test_query_as_keeps_to_the_grants_time_window(tmp_path: Path, lake: Path) -> None:
    cfg = _config(tmp_path, lake)
    access(cfg, "consumer", "add", "bob")
    access(cfg, "dataset", "add", "binance-trades", "trades.BINANCE.*")
    access(cfg, "request", "bob", "binance-trades")
    start, end = (datetime.fromtimestamp(T0 + s, UTC).isoformat() for s in (0.0, 0.195))
    code, out = access(cfg, "grant", "bob", "binance-trades", "--from", start, "--to", end)
    assert code == 0, out
    code, out = query_as(cfg, "SELECT symbol, count(*) AS n, min(ts_event) AS lo FROM trades GROUP BY 1 ORDER BY 1",
                         "bob")
    assert code == 0, out
    assert out.strip().splitlines() == ["symbol,n,lo", f"BTC-USDT,20,{int(T0) * 10**9}",
                                        f"ETH-USDT,20,{int(T0) * 10**9}"]
    code, out = query_as(cfg, f"SELECT * FROM trades WHERE ts_event >= {int(T0 + 1) * 10**9}", "bob")
    assert code != 0 and "consumer bob is not granted ts_event in" in out
