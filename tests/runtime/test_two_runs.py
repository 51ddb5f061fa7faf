"""Two `data-feed run --duration 30` into one lake, one after the other, as a user runs them: the simulator
continues its market's ids (a real exchange never repeats a trade), so the lake still holds every trade once;
no feature key lands twice (the second run does not redo the minute the first stopped inside); and the time
between the runs is in the lake as gaps rows: the first run's `stopped`, the second's `restart`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from data_feed.access.query import run_query
from tests.harness import CLI, duplicated_feature_keys, pipeline_config

RUN_SECONDS = 30


@pytest.mark.slow
def test_two_runs_into_one_lake_keep_every_trade_once_and_mark_the_time_between(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(pipeline_config(tmp_path)))
    for _ in range(2):
        done = subprocess.run([CLI, "run", "--config", str(config), "--duration", str(RUN_SECONDS), "--no-status"],
                              capture_output=True, text=True, timeout=RUN_SECONDS + 180)
        assert done.returncode == 0, done.stderr[-3000:]
    lake = tmp_path / "lake"
    counts = run_query(lake, "select exchange, symbol, count(*) n, count(distinct id) d, min(id) lo, max(id) hi "
                             "from trades group by all")
    assert len(counts) == 4 and (counts["n"] == counts["d"]).all(), counts
    assert (counts["hi"] - counts["lo"] + 1 >= counts["n"]).all()
    assert duplicated_feature_keys(lake) == 0
    gaps = run_query(lake, "select exchange, symbol, channel, reason, first_missing, last_missing, missing_from_ts, "
                           "missing_to_ts from gaps where channel = 'trades' order by ts_event")
    for (exchange, symbol), rows in gaps.groupby(["exchange", "symbol"]):
        reasons = rows["reason"].tolist()
        assert reasons == ["stopped", "restart", "stopped"], (exchange, symbol, reasons)
        stop, restart = rows.iloc[0], rows.iloc[1]
        assert restart["first_missing"] == stop["first_missing"]  # from the first run's last trade on...
        assert restart["missing_to_ts"] > restart["missing_from_ts"] == stop["missing_from_ts"]  # ...to the next
        ids = run_query(lake, f"select id from trades where exchange = '{exchange}' and symbol = '{symbol}'")["id"]
        between = set(range(int(restart["first_missing"]), int(restart["last_missing"]) + 1))
        assert not between & set(ids)  # the range names ids the lake does not have
