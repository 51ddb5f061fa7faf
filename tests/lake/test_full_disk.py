"""The lake on a filesystem that fills up for 30 s (a real tmpfs of 64 MB, filled with a file): the aggregator
stays up (no restart loop), `/health` says degraded with the reason, a write-error metric counts, and once space
returns everything lands exactly once, counted against the simulator's account."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from data_feed.access.query import run_query
from tests.conftest import IN_CI
from tests.harness import Run, assert_every_sent_trade_landed_once, pipeline_config, wait_for

FULL_SECONDS = 30
SIZE = "64m"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "lake"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for the lake: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
    return filler


def metric(run: Run, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port()}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.slow
def test_a_full_lake_disk_degrades_without_a_restart_loop_and_everything_lands_once_space_returns(
        tmp_path: Path, small_disk: Path) -> None:
    run = Run(tmp_path, pipeline_config(tmp_path)).start()
    try:
        filler = fill(small_disk)
        degraded = wait_for(lambda: [r for r in run.health().get("reasons", []) if "lake write failed" in r], 60,
                            "/health to say the lake is failing")
        assert "No space left on device" in degraded[0] or "full" in degraded[0], degraded
        time.sleep(FULL_SECONDS)
        health = run.health()
        assert health["status"] == "degraded"
        assert {r["role"]: r["restarts"] for r in health["roles"]}["aggregator"] == 0, health
        assert metric(run, "data_feed_lake_write_errors_total") >= 1
        filler.unlink()
        wait_for(lambda: run.health()["status"] == "ok", 60, "/health ok once the disk has room")
        time.sleep(3)
    finally:
        code = run.stop()
    assert code == 0, run.err[-3000:]
    assert_every_sent_trade_landed_once(run)
    assert set(run_query(run.lake, "select distinct reason from gaps")["reason"]) == {"stopped"}
    assert not list(small_disk.rglob(".tmp-*"))  # no half-written file left behind
