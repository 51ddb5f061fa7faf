"""``data-feed status``: the running pipeline's roles and health, from its spawner's ``/health``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.table import Table

from data_feed.cli.common import ConfigOpt, app, console
from data_feed.contracts.rundir import RunDir
from data_feed.observability.exits import fail, load_config_or_exit


@app.command()
def status(config: ConfigOpt = None) -> None:
    """List the running roles with PID, uptime, restarts, and the aggregator's lag; exit 1, saying why, unless
    every role is up."""
    cfg = load_config_or_exit(config)
    run_dir = RunDir(Path(cfg.spawner.run_dir))
    health = _fetch_health(run_dir.spawner_file)
    table = Table(title=f"data-feed: {health['status']} (spawner pid {health['pid']}, up {health['uptime_s']}s)")
    for col in ("role", "pid", "alive", "uptime (s)", "restarts"):
        table.add_column(col)
    for r in health["roles"]:
        table.add_row(r["role"], str(r["pid"]), "yes" if r["alive"] else "NO", str(r["uptime_s"]), str(r["restarts"]))
    console.print(table)
    lag = Table(title="consumer lag (stream entries not yet in the lake)")
    lag.add_column("stream")
    lag.add_column("lag", justify="right")
    for key, value in health["lag"].items():
        lag.add_row(key, str(value))
    console.print(lag)
    if health["status"] != "ok":
        fail(f"data-feed is {health['status']}: {'; '.join(unhealthy_reasons(health, run_dir.logs_dir))}")


def unhealthy_reasons(health: dict[str, Any], logs_dir: Path) -> list[str]:
    """Why a /health body is not ok, one phrase per cause."""
    reasons = ["the spawner is stopping every role"] if health["status"] == "stopping" else []
    reasons += [f"{r['role']} is not running (restarted {r['restarts']} times; see "
                f"{logs_dir / (r['role'].replace(' ', '-') + '.log')})" for r in health["roles"] if not r["alive"]]
    return reasons or [f"/health says {health['status']}"]


def _fetch_health(state_file: Path) -> dict[str, Any]:
    if not state_file.exists():
        fail(f"data-feed is not running (no {state_file})")
    port = json.loads(state_file.read_text())["http_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 503 still carries the health body
        body = json.loads(err.read())
    except OSError as err:
        fail(f"data-feed is not answering on port {port} ({err}); stale {state_file}?")
    return body
