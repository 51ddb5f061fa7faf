"""End to end: the live featurizer under `data-feed run` (simulator -> collectors -> bus -> featurizer -> Redis
-> aggregator -> lake) lands `features` that `data-feed query` reads, equal to `featurizer backfill` over the lake,
whether collectors publish after their flush or on receipt."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from data_feed.access.query import run_query
from tests.conftest import ROOT, default_config_dict

BIN = ROOT / ".venv" / "bin"
RUN_SECONDS = 20
KEY = ["exchange", "symbol", "interval", "ts_event"]


@pytest.fixture(scope="module", params=[False, True], ids=["publish-after-flush", "publish-on-receipt"])
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run each way collectors feed the bus (``bus.publish_on_receipt``): after the flush put the rows in
    Redis, or as each frame's rows arrive."""
    tmp = tmp_path_factory.mktemp("featurizer-e2e")
    data = default_config_dict()
    data["bus"]["publish_on_receipt"] = request.param
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'run' / 'df.db'}"
    data["featurizer"].update(intervals=["1s", "5s", "1m"])
    for ex in data["exchanges"].values():
        ex["market"].update(trades_per_second=60, book_updates_per_second=150)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    run = subprocess.run([str(BIN / "data-feed"), "run", "--config", str(config), "--duration", str(RUN_SECONDS),
                          "--no-status"], capture_output=True, text=True, timeout=RUN_SECONDS + 150)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp / "backfill.parquet"
    bf = subprocess.run([str(BIN / "featurizer"), "backfill", "--config", str(config), "--from", "0",
                         "--to", "4102444800", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bf.returncode == 0, bf.stderr[-3000:]
    yield {"tmp": tmp, "lake": tmp / "lake", "backfill": pq.read_table(out).to_pandas(),
           "log": (tmp / "run" / "logs" / "featurizer.log").read_text()}


def live_features(lake: Path) -> pd.DataFrame:
    return run_query(lake, "select * exclude (date) from features")


def test_live_features_land_in_the_lake_and_count_every_trade(session: dict[str, Any]) -> None:
    live = live_features(session["lake"])
    trades = run_query(session["lake"], "select exchange, symbol, count(*) as n from trades group by all")
    assert len(trades) == 4 and trades["n"].min() > 100
    for interval in ("1s", "5s", "1m"):
        per_symbol = live[live["interval"] == interval].groupby(["exchange", "symbol"])["trade_count"].sum()
        want = trades.set_index(["exchange", "symbol"])["n"]
        assert per_symbol.sort_index().tolist() == want.sort_index().tolist(), interval
    ones = live[live["interval"] == "1s"]
    assert (ones.groupby(["exchange", "symbol"]).size() >= RUN_SECONDS - 8).all()  # one row per second
    assert ones["book_updates"].sum() > 0 and ones["twap_mid"].notna().mean() > 0.9
    assert "late trades {'BINANCE': 0, 'COINBASE': 0}" in session["log"]


def test_live_features_equal_backfill_over_the_lake(session: dict[str, Any]) -> None:
    live = live_features(session["lake"]).sort_values(KEY).reset_index(drop=True)
    batch = session["backfill"].sort_values(KEY).reset_index(drop=True)
    assert len(live) == len(batch) > 0
    pd.testing.assert_frame_equal(live[KEY], batch[KEY], check_dtype=False)
    compared = 0
    for col in live.columns:
        if col in KEY or col == "ts_recv":  # ts_recv: when each path closed the slice
            continue
        a = live[col].to_numpy(dtype=np.float64, na_value=np.nan)
        b = batch[col].to_numpy(dtype=np.float64, na_value=np.nan)
        np.testing.assert_array_equal(a, b, err_msg=col)  # bit for bit: same engine, same records, same order
        compared += 1
    assert compared == 27  # the 26 statistics and state columns, and complete


def test_coinbase_open_and_close_are_the_first_and_last_trade_by_exchange_time(session: dict[str, Any]) -> None:
    """The simulator lists a market_trades frame's trades newest first, as Coinbase does: each 1 s slice's open,
    close and realized variance are still those of its trades in (exchange time, trade id) order."""
    trades = run_query(session["lake"], "select symbol, ts_event, ts_recv, id, price from trades "
                       "where exchange = 'COINBASE'")
    trades["slice"] = trades["ts_event"] // 1_000_000_000 * 1_000_000_000
    by_exchange = trades.sort_values(["ts_event", "id"], kind="stable").groupby(["symbol", "slice"])["price"]
    per_frame = trades.groupby(["ts_recv", "symbol"])["id"]  # one frame's trades share its receive time
    assert (per_frame.size() > 1).sum() > 5, "the simulator sent frames of several trades"
    arrival = trades.sort_values(["ts_recv", "id"], ascending=[True, False])  # each frame newest first
    opened = arrival.groupby(["symbol", "slice"])["price"].first()
    assert (opened != by_exchange.first()).sum() > 0, "arrival order would give other opens"
    live = live_features(session["lake"])
    ones = live[(live["exchange"] == "COINBASE") & (live["interval"] == "1s") & (live["trade_count"] > 0)]
    ones = ones.set_index(["symbol", "ts_event"]).sort_index()
    key = list(ones.index)
    assert len(key) > 20
    np.testing.assert_array_equal(ones["open"].to_numpy(), by_exchange.first().loc[key].to_numpy())
    np.testing.assert_array_equal(ones["close"].to_numpy(), by_exchange.last().loc[key].to_numpy())
    rv = by_exchange.apply(lambda p: float((np.log(p.to_numpy()[1:] / p.to_numpy()[:-1]) ** 2).sum()))
    np.testing.assert_allclose(ones["realized_variance"].to_numpy(), rv.loc[key].to_numpy(), rtol=1e-9, atol=1e-18)
