"""Driving a real `data-feed run` from a test: config, start, role PIDs from /health, kills, stop, and the
lake's account checked against the simulator's.

Everything waits on conditions (a PID appearing, a count reached) with generous deadlines, never on a
number of events per second of wall clock: the machine running the tests may be loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from data_feed.access.query import run_query
from tests.conftest import ROOT, default_config_dict

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
NS = 1_000_000_000


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """The first truthy value of ``condition()`` within ``timeout`` seconds; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def pipeline_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The default config (two simulated exchanges) under ``tmp``, with short slices; sections update it."""
    data = default_config_dict()
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=2, allowed_lateness_seconds=0.5)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0, restart_backoff_max_seconds=1,
                           stop_timeout_seconds=30)
    data["database"]["url"] = f"sqlite:///{tmp / 'df.db'}"
    data["featurizer"].update(allowed_lateness_seconds=0.5)
    for name, value in sections.items():
        data.setdefault(name, {}).update(value)
    return data


@dataclass
class Run:
    """One `data-feed run` subprocess and what it left behind."""

    tmp: Path
    config: dict[str, Any]
    proc: subprocess.Popen[str] | None = None
    stopped_in: float = 0.0
    out: str = ""
    err: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.yaml"

    @property
    def run_dir(self) -> Path:
        return Path(self.config["spawner"]["run_dir"])

    @property
    def lake(self) -> Path:
        return Path(self.config["lake"]["root"])

    def start(self, wait_for_lake: bool = True) -> Run:
        self.config_path.write_text(yaml.safe_dump(self.config))
        # files, not pipes: a long run's log must never fill a pipe nobody reads and block the spawner
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            proc = self.proc = subprocess.Popen([CLI, "run", "--config", str(self.config_path), "--no-status",
                                                 *self.extra_args], stdout=out, stderr=err, text=True)
        wait_for(lambda: self.port() is not None or proc.poll() is not None, 90, "the spawner's status port")
        assert proc.poll() is None, self.communicate()
        if wait_for_lake:
            wait_for(lambda: self.landed("trades") > 0, 90, "the first trades slice")
        return self

    @property
    def out_path(self) -> Path:
        return self.tmp / "spawner.out"

    @property
    def err_path(self) -> Path:
        return self.tmp / "spawner.err"

    def output(self) -> tuple[str, str]:
        """What the spawner printed so far: (stdout, stderr)."""
        return (self.out_path.read_text(errors="replace") if self.out_path.exists() else "",
                self.err_path.read_text(errors="replace") if self.err_path.exists() else "")

    def redis_url(self) -> str:
        url: str = json.loads((self.run_dir / "runtime.json").read_text())["redis_url"]
        return url

    def port(self) -> int | None:
        try:
            return int(json.loads((self.run_dir / "spawner.json").read_text())["http_port"])
        except (OSError, ValueError, KeyError):
            return None

    def health(self) -> dict[str, Any]:
        port = self.port()
        if port is None:
            return {"roles": [], "status": "unknown"}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
        except (OSError, ValueError):
            return {"roles": [], "status": "unknown"}
        return body

    def pid(self, role: str) -> int | None:
        for r in self.health()["roles"]:
            if r["role"] == role and r["alive"]:
                return int(r["pid"])
        return None

    def redis_pid(self) -> int:
        """The private redis-server's PID (it retitles itself ``redis-server 127.0.0.1:PORT``)."""
        address = self.redis_url().split("//", 1)[1].split("/", 1)[0].encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"redis-server" in cmd and address in cmd and proc.name != str(os.getpid()):
                    return int(proc.name)
        raise AssertionError("the private redis-server is not running")

    def landed(self, channel: str) -> int:
        try:
            return int(run_query(self.lake, f"select count(*) from {channel}").iloc[0, 0])
        except Exception:
            return 0

    def kill_role(self, role: str, timeout: float = 60) -> int:
        """SIGKILL ``role`` and wait until the spawner has a new process for it; returns the new PID."""
        old = wait_for(lambda: self.pid(role), timeout, f"{role} to be running")
        os.kill(old, signal.SIGKILL)
        return int(wait_for(lambda: (p := self.pid(role)) and p != old and p, timeout, f"{role} restarted"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 240) -> int:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        self.out, self.err = self.output()
        self.stopped_in = time.monotonic() - started
        return self.proc.returncode

    def communicate(self) -> str:
        assert self.proc is not None
        self.proc.wait(timeout=60)
        out, err = self.output()
        return out + err

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted((self.run_dir / "logs").glob("*.log")))

    def account(self) -> dict[str, Any]:
        account: dict[str, Any] = json.loads((self.run_dir / "sim" / "sent-at-stop.json").read_text())
        return account


def trade_ids(lake: Path) -> dict[tuple[str, str], list[int]]:
    df = run_query(lake, "select exchange, symbol, id from trades order by exchange, symbol, id")
    return {(str(ex), str(sym)): g["id"].astype(int).tolist() for (ex, sym), g in df.groupby(["exchange", "symbol"])}


def trade_gaps(lake: Path) -> pd.DataFrame:
    return run_query(lake, "select exchange, symbol, reason, first_missing, last_missing, ts_event, detail from gaps "
                           "where channel = 'trades'")


def uncovered_missing_ids(lake: Path) -> dict[tuple[str, str], list[int]]:
    """Per (exchange, symbol): trade ids missing from the lake (1 to the highest) that no gaps row's id range
    holds. A bound a row leaves open (null) is unbounded on that side."""
    gaps = trade_gaps(lake)
    out = {}
    for (exchange, symbol), ids in trade_ids(lake).items():
        present = set(ids)
        missing = [i for i in range(1, max(ids) + 1) if i not in present]
        rows = gaps[(gaps["exchange"] == exchange) & (gaps["symbol"] == symbol)]
        ranges = [(-1 if pd.isna(r.first_missing) else int(r.first_missing),
                   1 << 62 if pd.isna(r.last_missing) else int(r.last_missing)) for r in rows.itertuples()]
        uncovered = [i for i in missing if not any(lo <= i <= hi for lo, hi in ranges)]
        if uncovered:
            out[(exchange, symbol)] = uncovered
    return out


def duplicated_trade_ids(lake: Path) -> dict[tuple[str, str], int]:
    return {key: len(ids) - len(set(ids)) for key, ids in trade_ids(lake).items() if len(ids) != len(set(ids))}


def duplicated_feature_keys(lake: Path) -> int:
    df = run_query(lake, "select exchange, symbol, interval, ts_event, count(*) n from features group by all "
                         "having count(*) > 1")
    return len(df)


def assert_every_sent_trade_landed_once(run: Run) -> None:
    """Per simulated symbol: the lake's trade ids are exactly what the simulator sent (its account at stop):
    none twice, none missing but the ones it generated and never wrote to a socket."""
    account = run.account()["stats"]
    for exchange in ("BINANCE", "COINBASE"):
        for symbol, sent in account[exchange]["symbols"].items():
            ids = run_query(run.lake, f"select id from trades where exchange = '{exchange}' and symbol = "
                                      f"'{symbol}'")["id"].tolist()
            assert len(ids) == len(set(ids)) == sent["trades_sent"] > 0, (exchange, symbol)
            assert max(ids) == sent["last_trade_id"], (exchange, symbol)
            assert set(range(1, max(ids) + 1)) - set(ids) == set(sent["dropped_trade_ids"]), (exchange, symbol)
