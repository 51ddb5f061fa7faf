"""Chaos: one `data-feed run` of over three minutes while every role is SIGKILLed at random instants, each
collector, the featurizer, the aggregator and the simulator at least 5 times and redis-server at least 10 (over
35 kills). The spawner restarts each one; afterwards the lake must still tell the truth:

- no trade id twice, and every trade id missing (1 to the highest the simulator numbered) inside a gaps row's
  id range: whatever was lost is said to be lost;
- no feature key twice, and every feature slice marked complete equal to `featurizer backfill` over the lake
  (a slice the featurizer saw only part of must say so);
- the stop takes its normal time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_feed.access.query import run_query
from tests.conftest import ROOT
from tests.harness import (
    Run,
    duplicated_feature_keys,
    duplicated_trade_ids,
    pipeline_config,
    uncovered_missing_ids,
    wait_for,
)

CHAOS_SECONDS = 180
KILLS_PER_ROLE = 5
REDIS_KILLS = 10
ROLES = ("collector BINANCE", "collector COINBASE", "featurizer", "aggregator", "simulator")
STOP_SECONDS_MAX = 60  # the catch-up, the collectors' flush, the featurizer and the aggregator's drain
SEED = 20261202
FEATURE_KEY = ["exchange", "symbol", "interval", "ts_event"]
NOT_COMPARED = {*FEATURE_KEY, "ts_recv", "complete"}


def kill_redis(run: Run) -> None:
    old = run.redis_pid()
    os.kill(old, signal.SIGKILL)
    try:
        wait_for(lambda: _other_redis(run, old), 60, "redis-server restarted by the spawner")
    except AssertionError as err:
        redis_log = run.run_dir / "redis" / "redis.log"
        tail = redis_log.read_text(errors="replace")[-3000:] if redis_log.exists() else "(no redis.log)"
        alive = run.proc is not None and run.proc.poll() is None
        raise AssertionError(f"{err}; spawner alive: {alive}\nspawner stderr:\n{run.output()[1][-4000:]}\n"
                             f"redis.log:\n{tail}") from None


def _other_redis(run: Run, old: int) -> bool:
    try:
        return run.redis_pid() != old
    except AssertionError:
        return False


def unmarked_partial_slices(run: Run) -> pd.DataFrame:
    """Live slices marked complete whose values differ from a backfill over the lake."""
    out = run.tmp / "backfill.parquet"
    bf = subprocess.run([str(ROOT / ".venv" / "bin" / "featurizer"), "backfill", "--config", str(run.config_path),
                         "--from", "0", "--to", "4102444800", "--out", str(out)], capture_output=True, text=True,
                        timeout=300)
    assert bf.returncode == 0, bf.stderr[-3000:]
    live = run_query(run.lake, "select * exclude (date) from features where complete")
    batch = pq.read_table(out).to_pandas()
    both = live.merge(batch, on=FEATURE_KEY, suffixes=("", "_bf"), how="left", indicator=True)
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"][FEATURE_KEY]
    bad = np.zeros(len(both), dtype=bool)
    for col in live.columns:
        if col in NOT_COMPARED:
            continue
        a = both[col].to_numpy(dtype=np.float64, na_value=np.nan)
        b = both[col + "_bf"].to_numpy(dtype=np.float64, na_value=np.nan)
        bad |= ~np.isclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
    return both.loc[bad, FEATURE_KEY]


def assert_backfill_fills_exactly_the_incomplete_slices(run: Run) -> None:
    out = run.tmp / "filled.parquet"
    bf = subprocess.run([str(ROOT / ".venv" / "bin" / "featurizer"), "backfill", "--config", str(run.config_path),
                         "--from", "0", "--to", "4102444800", "--incomplete", "--out", str(out)],
                        capture_output=True, text=True, timeout=300)
    assert bf.returncode == 0, bf.stderr[-3000:]
    filled = pq.read_table(out).to_pandas()[FEATURE_KEY]
    landed = run_query(run.lake, "select exchange, symbol, interval, ts_event, complete from features")
    whole = landed[landed["complete"]][FEATURE_KEY]
    assert filled.merge(whole, on=FEATURE_KEY).empty  # nothing the lake already has whole
    partial = landed[~landed["complete"]][FEATURE_KEY]
    missed = partial.merge(filled, on=FEATURE_KEY, how="left", indicator=True)
    assert (missed["_merge"] == "both").all(), missed[missed["_merge"] != "both"].head()


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize("on_receipt", [False, True], ids=["publish-after-flush", "publish-on-receipt"])
def test_every_role_killed_again_and_again_leaves_a_lake_that_tells_the_truth(tmp_path: Path, on_receipt: bool) -> None:
    """Both ways collectors feed the bus (``bus.publish_on_receipt``): on receipt, a collector killed between its
    publish and its flush has sent live slices rows the lake never gets; they must land incomplete."""
    config = pipeline_config(tmp_path)
    config["bus"]["publish_on_receipt"] = on_receipt
    run = Run(tmp_path, config).start()
    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    started = time.monotonic()
    try:
        while time.monotonic() - started < CHAOS_SECONDS or any(kills[r] < KILLS_PER_ROLE for r in ROLES) \
                or kills["redis"] < REDIS_KILLS:
            time.sleep(rng.uniform(0.5, 4.0))
            victim = rng.choice([*ROLES, "redis", "redis"])
            if victim == "redis":
                kill_redis(run)
            else:
                run.kill_role(victim)
            kills[victim] += 1
        wait_for(lambda: run.health()["status"] == "ok", 120, "every role up again")
        time.sleep(5)  # data after the last kill, so every outage has a record after it
    finally:
        code = run.stop()
    assert code == 0, run.err[-3000:]
    assert sum(kills.values()) >= 35 and min(kills[r] for r in ROLES) >= KILLS_PER_ROLE, kills
    assert run.stopped_in < STOP_SECONDS_MAX, run.stopped_in
    assert duplicated_trade_ids(run.lake) == {}
    assert uncovered_missing_ids(run.lake) == {}
    assert duplicated_feature_keys(run.lake) == 0
    assert run_query(run.lake, "select count(*) from features where not complete").iloc[0, 0] > 0
    partial = unmarked_partial_slices(run)
    assert partial.empty, partial.head(20)
    assert_backfill_fills_exactly_the_incomplete_slices(run)
    reasons = set(run_query(run.lake, "select distinct reason from gaps")["reason"])
    assert {"restart", "disconnect"} <= reasons, reasons
