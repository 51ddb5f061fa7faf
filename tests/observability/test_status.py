"""`data-feed status` against a running `data-feed run`: exit 0 while every role is up; once a role is down, a
non-zero exit and a line saying which role and why the pipeline is degraded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.lakes import CLI, cli

START_DEADLINE_SECONDS = 90.0
KILL_DEADLINE_SECONDS = 90.0


def _health(run_dir: Path) -> dict[str, Any]:
    port = json.loads((run_dir / "spawner.json").read_text())["http_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    return body


def test_status_exits_nonzero_and_names_the_role_that_is_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = {"exchanges": {"BINANCE": {"trades": {"symbols": ["BTC-USDT"]}}},
              "lake": {"root": str(tmp_path / "lake")}, "featurizer": {"enabled": False}, "bus": {"enabled": False},
              "spawner": {"http_port": 0, "run_dir": str(run_dir)},
              "database": {"url": f"sqlite:///{tmp_path / 'df.db'}"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.Popen([CLI, "run", "--config", str(path), "--duration", "300", "--no-status"],
                           stdout=subprocess.DEVNULL, stderr=(tmp_path / "run.log").open("wb"))
    try:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        healthy = cli("status", "--config", str(path))
        while healthy.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            healthy = cli("status", "--config", str(path))
        assert healthy.returncode == 0, (healthy.stderr, (tmp_path / "run.log").read_text()[-3000:])
        assert "data-feed: ok" in healthy.stdout and healthy.stderr == ""
        degraded = _kill_until_status_fails(run_dir, path)
        restarts = _restarts_counted(run_dir)
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=120)
    assert degraded.returncode == 1
    assert degraded.stderr.startswith("error: data-feed is degraded: collector BINANCE is not running (restarted "), \
        degraded.stderr
    assert degraded.stderr.endswith(f" times; see {run_dir / 'logs' / 'collector-BINANCE.log'})\n")
    assert "data-feed: degraded" in degraded.stdout and degraded.stderr.count("\n") == 1
    assert restarts >= 1  # the spawner's own metrics are still multiprocess ones, served at /metrics


def _restarts_counted(run_dir: Path) -> float:
    """data_feed_role_restarts_total of the collector at /metrics, once the spawner has restarted it."""
    port = json.loads((run_dir / "spawner.json").read_text())["http_port"]
    deadline = time.monotonic() + KILL_DEADLINE_SECONDS
    prefix = 'data_feed_role_restarts_total{role="collector BINANCE"}'
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            lines = [line for line in resp.read().decode().splitlines() if line.startswith(prefix)]
        if (lines and float(lines[0].split()[-1]) >= 1) or time.monotonic() > deadline:
            return float(lines[0].split()[-1]) if lines else 0.0
        time.sleep(0.5)


def _kill_until_status_fails(run_dir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """SIGKILL the collector (the spawner restarts it after a backoff that doubles each time) until a status
    call lands while it is down."""
    deadline = time.monotonic() + KILL_DEADLINE_SECONDS
    while True:
        role = next(r for r in _health(run_dir)["roles"] if r["role"] == "collector BINANCE")
        if role["alive"]:
            os.kill(role["pid"], signal.SIGKILL)
        out = cli("status", "--config", str(config))
        if out.returncode != 0 or time.monotonic() > deadline:
            return out
