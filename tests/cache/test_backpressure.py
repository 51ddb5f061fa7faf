"""A bounded cache that never drops silently: the aggregator frozen (SIGSTOP) for 30 s while streams are bounded
at 50 entries. Collectors and the featurizer must not trim what the aggregator has not landed: they spill to
local disk at the bound and write the spill back once it catches up. Nothing is lost, counted against the
simulator's account."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from data_feed.access.query import run_query
from tests.harness import Run, assert_every_sent_trade_landed_once, duplicated_feature_keys, pipeline_config, wait_for

MAXLEN = 50
STALL_SECONDS = 30


@pytest.mark.slow
def test_a_stalled_aggregator_with_tiny_streams_loses_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path, pipeline_config(tmp_path, redis={"stream_maxlen": MAXLEN})).start()
    try:
        pid = wait_for(lambda: run.pid("aggregator"), 30, "the aggregator")
        os.kill(pid, signal.SIGSTOP)
        try:
            spill = run.run_dir / "spill"
            wait_for(lambda: any(spill.rglob("*.mpk.zst")), STALL_SECONDS, "collectors spilling at the bound")
            time.sleep(STALL_SECONDS)
            spilled = {p.parent.parent.name for p in spill.rglob("*.mpk.zst")}
        finally:
            os.kill(pid, signal.SIGCONT)
        assert {"collector-BINANCE", "collector-COINBASE", "featurizer"} <= spilled, spilled
        wait_for(lambda: not any(spill.rglob("*.mpk.zst")), 120, "the spills written back")
        restarts = {r["role"]: r["restarts"] for r in run.health()["roles"]}
        assert restarts["aggregator"] == 0, restarts  # frozen, not crashed: it resumed where it stopped
    finally:
        code = run.stop()
    assert code == 0, run.err[-3000:]
    assert_every_sent_trade_landed_once(run)
    reasons = set(run_query(run.lake, "select distinct reason from gaps")["reason"])
    assert reasons == {"stopped"}, reasons  # nothing overflowed, nothing was trimmed
    assert duplicated_feature_keys(run.lake) == 0
    seconds = run_query(run.lake, "select exchange, symbol, count(*) n from features where interval = '1s' "
                                  "group by all")
    assert (seconds["n"] >= STALL_SECONDS).all(), seconds  # the feature slices of the stall landed too
