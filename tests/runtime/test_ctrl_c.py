"""The README's main path, the way a user takes it: `data-feed run` in a real terminal (a pseudo-terminal, so the
live status table is drawn), Ctrl-C after 40 s. The terminal's SIGINT reaches the whole foreground process group;
only the spawner must take it (every child, the private redis-server included, runs in its own session) and stop
the roles in data-flow order: exit 0, the summary printed, every trade the simulator sent in the lake once."""

from __future__ import annotations

import time
from pathlib import Path

import pexpect
import pytest
import yaml

from data_feed.access.query import run_query
from tests.harness import CLI, Run, assert_every_sent_trade_landed_once, pipeline_config, wait_for

RUN_SECONDS = 40


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_exits_0_with_a_summary_and_every_trade_landed_once(tmp_path: Path) -> None:
    run = Run(tmp_path, pipeline_config(tmp_path))
    run.config_path.write_text(yaml.safe_dump(run.config))
    child = pexpect.spawn(CLI, ["run", "--config", str(run.config_path)], cwd=str(tmp_path), encoding="utf-8",
                          codec_errors="replace", dimensions=(50, 200), timeout=240)
    started = time.monotonic()
    child.expect("Ctrl-C stops cleanly")  # the live table is on the terminal
    wait_for(lambda: run.landed("trades") > 0, 60, "trades in the lake")
    time.sleep(max(0.0, RUN_SECONDS - (time.monotonic() - started)))
    child.sendcontrol("c")
    child.expect("landed this run")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in (child.before or "")
    assert_every_sent_trade_landed_once(run)
    assert run.landed("features") > 0
    gaps = run_query(run.lake, "select distinct reason from gaps")["reason"].tolist()
    assert gaps == ["stopped"]  # a clean stop, marked; nothing else went missing
