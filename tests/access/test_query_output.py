"""`data-feed query` output: JSON lines and CSV give back every value exactly (int64 nanoseconds as integers,
doubles at full precision, large ids as integers, NULL as null); the table shows lake instants as UTC
timestamps, NULL as NULL, integer sums as integers, is never cut to 80 columns when piped, and shows at most
--max-rows rows with a note of the rest; Athena's approx_percentile with an array of quantiles returns a list."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_feed.cli import app
from tests.conftest import make_config
from tests.lakes import T0, land, trade_rows

runner = CliRunner()
BIG_ID = 2**53 + 1  # not representable as a double
TINY_PRICE = 2.37e-12
THIRD = 1 / 3


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, redis_server: object) -> Path:
    tmp = tmp_path_factory.mktemp("query-output")
    cfg = make_config(tmp, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})
    rows = trade_rows("BTC-USDT", 200, start=T0 + 1)
    rows[:3] = [("BTC-USDT", T0 + 0.123456, T0 + 0.123457, BIG_ID, None, "buy", TINY_PRICE, THIRD),
                ("BTC-USDT", T0 + 0.5, T0 + 0.500001, None, "abc-1", "sell", 65_000.01, 1e-8),
                ("BTC-USDT", T0 + 0.75, T0 + 0.750001, 7, None, "buy", 0.1 + 0.2, 123456.789)]
    return land(cfg, redis_server.url, "BINANCE", "trades", rows)  # type: ignore[attr-defined]


FIRST_THREE = "select ts_event, ts_recv, id, id_text, price, amount from trades order by ts_event limit 3"


def _query(lake: Path, sql: str, *options: str) -> str:
    out = runner.invoke(app, ["query", sql, "--lake", str(lake), *options])
    assert out.exit_code == 0, out.stderr
    return out.stdout


def test_json_lines_round_trip_every_value_exactly(lake: Path) -> None:
    rows = [json.loads(line) for line in _query(lake, FIRST_THREE, "--format", "json").splitlines()]
    assert rows == [
        {"ts_event": 1_700_000_000_123_456_000, "ts_recv": 1_700_000_000_123_457_000, "id": BIG_ID, "id_text": None,
         "price": TINY_PRICE, "amount": THIRD},
        {"ts_event": 1_700_000_000_500_000_000, "ts_recv": 1_700_000_000_500_001_000, "id": None, "id_text": "abc-1",
         "price": 65_000.01, "amount": 1e-8},
        {"ts_event": 1_700_000_000_750_000_000, "ts_recv": 1_700_000_000_750_001_000, "id": 7, "id_text": None,
         "price": 0.1 + 0.2, "amount": 123456.789},
    ]
    assert all(type(r["ts_event"]) is int for r in rows) and rows[0]["price"] == TINY_PRICE != 0.0


def test_json_keeps_integer_sums_timestamps_and_nan(lake: Path) -> None:
    sql = ("select sum(id) as ids, count(*) as n, make_timestamp_ns(1700000000123456789) as t, "
           "date_trunc('minute', make_timestamp(1700000000123456)) as minute, 'nan'::double as nothing, "
           "1.50::decimal(10, 2) as money from trades")
    (row,) = [json.loads(line) for line in _query(lake, sql, "--format", "json").splitlines()]
    expected_ids = BIG_ID + 7 + sum(range(4, 201))
    assert row == {"ids": expected_ids, "n": 200, "t": "2023-11-14T22:13:20.123456789",
                   "minute": "2023-11-14T22:13:00.000000", "nothing": None, "money": 1.50}
    assert type(row["ids"]) is int


def test_csv_keeps_exact_integers_and_doubles(lake: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(_query(lake, FIRST_THREE, "--format", "csv"))))
    assert [r["ts_event"] for r in rows] == ["1700000000123456000", "1700000000500000000", "1700000000750000000"]
    assert [r["id"] for r in rows] == [str(BIG_ID), "", "7"]
    assert [float(r["price"]) for r in rows] == [TINY_PRICE, 65_000.01, 0.1 + 0.2]
    assert rows[0]["price"] == repr(TINY_PRICE) and rows[0]["amount"] == repr(THIRD)


def test_table_shows_utc_times_null_and_integer_sums(lake: Path) -> None:
    lines = _query(lake, FIRST_THREE).splitlines()
    assert lines[0].split() == ["ts_event", "ts_recv", "id", "id_text", "price", "amount"]
    assert lines[2].split() == ["2023-11-14T22:13:20.123456Z", "2023-11-14T22:13:20.123457Z", str(BIG_ID), "NULL",
                                repr(TINY_PRICE), repr(THIRD)]
    assert lines[3].split() == ["2023-11-14T22:13:20.500000Z", "2023-11-14T22:13:20.500001Z", "NULL", "abc-1",
                                "65000.01", "1e-08"]
    assert len(lines) == 5 and lines[4].startswith("2023-11-14T22:13:20.750000Z")
    sums = _query(lake, "select sum(id) as ids, min(ts_event), max(ts_event) from trades").splitlines()
    assert sums[2].split() == [str(BIG_ID + 7 + sum(range(4, 201))), "2023-11-14T22:13:20.123456Z",
                               "2023-11-14T22:13:22.990Z"]  # as many digits as the value needs


def test_table_is_not_cut_to_80_columns_when_piped(lake: Path) -> None:
    wide = "x" * 150
    out = _query(lake, f"select '{wide}' as wide, ts_event, price, amount, id, side from trades limit 2")
    lines = out.splitlines()
    assert all(len(line) > 200 for line in lines[:4]) and wide in lines[2] and "…" not in out


def test_table_shows_at_most_max_rows_and_says_how_many_more(lake: Path) -> None:
    default = _query(lake, "select * from range(2500) t(n)").splitlines()
    assert len(default) == 2 + 1000 + 1 and default[-2].strip() == "999"
    assert default[-1] == "(1,500 more rows not shown; --max-rows 0 shows all, --format csv or json for programs)"
    ten = _query(lake, "select * from range(2500) t(n)", "--max-rows", "10").splitlines()
    assert len(ten) == 13 and ten[-1].startswith("(2,490 more rows not shown")
    every = _query(lake, "select * from range(2500) t(n)", "--max-rows", "0").splitlines()
    assert len(every) == 2 + 2500 and every[-1].strip() == "2499"
    assert _query(lake, "select * from trades where false").splitlines()[-1] == "(no rows)"


def test_athena_approx_percentile_with_an_array_of_quantiles_returns_a_list(lake: Path) -> None:
    sql = "SELECT approx_percentile(price, ARRAY[0.1, 0.9]) AS q FROM trades WHERE id > 3"
    (row,) = [json.loads(line) for line in _query(lake, sql, "--dialect", "athena", "--format", "json").splitlines()]
    prices = np.array([r[6] for r in trade_rows("BTC-USDT", 200, start=T0 + 1)[3:]])
    assert isinstance(row["q"], list) and len(row["q"]) == 2
    for q, value in zip((0.1, 0.9), row["q"], strict=True):
        assert abs((prices <= value).mean() - q) <= 0.1 and value in prices, (q, value)
    table = _query(lake, sql, "--dialect", "athena").splitlines()
    assert table[2].startswith("[") and table[2].rstrip().endswith("]")
