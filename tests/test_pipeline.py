"""End to end: `data-feed run` (spawner, private redis-server, simulator, cryptofeed collectors, aggregator)
lands every trade exactly once and a book identical to the simulator's, observably and with a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_feed.access.query import run_query
from data_feed.lake.layout import channel_files
from data_feed.runtime.spawner import SIM_ACCOUNT_FILE
from tests.conftest import ROOT, default_config_dict

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
RUN_SECONDS = 20


def write_config(tmp_path: Path, **market: float) -> Path:
    data = default_config_dict()
    data["lake"].update(root=str(tmp_path / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp_path / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp_path / 'run' / 'df.db'}"
    for ex in data["exchanges"].values():
        ex["market"].update(market)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=180, **kwargs)


def rebuild_book(rows: list[dict[str, Any]]) -> dict[str, dict[float, float]]:
    """Apply l2_book rows in ts_recv order; a run of snapshot rows replaces the book."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    current_snapshot = None
    for r in rows:
        if r["snapshot"] and r["ts_recv"] != current_snapshot:
            book = {"bid": {}, "ask": {}}
            current_snapshot = r["ts_recv"]
        side = book[r["side"]]
        if r["size"] == 0:
            side.pop(r["price"], None)
        else:
            side[r["price"]] = r["size"]
    return book


def top(book: dict[str, dict[float, float]], depth: int) -> dict[str, list[list[float]]]:
    bids = sorted(book["bid"].items(), reverse=True)[:depth]
    asks = sorted(book["ask"].items())[:depth]
    return {"bids": [[p, s] for p, s in bids], "asks": [[p, s] for p, s in asks]}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One `data-feed run --duration` observed while running, kept for the assertions below."""
    tmp = tmp_path_factory.mktemp("pipeline")
    config = write_config(tmp, trades_per_second=60, book_updates_per_second=150)
    proc = subprocess.Popen([CLI, "run", "--config", str(config), "--duration", str(RUN_SECONDS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, Any] = {"tmp": tmp, "config": config}
    try:
        seen.update(observe_while_running(tmp / "run", config))
        out, err = proc.communicate(timeout=RUN_SECONDS + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen.update(returncode=proc.returncode, stdout=out, stderr=err)
    yield seen


def observe_while_running(run_dir: Path, config: Path) -> dict[str, Any]:
    state = run_dir / "spawner.json"
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    port = json.loads(state.read_text())["http_port"]
    time.sleep(8)  # let data flow
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        health = (resp.status, json.loads(resp.read()))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics_text = resp.read().decode()
    status = cli("status", "--config", str(config))
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {"health": health, "metrics": metrics_text, "status": status, "ps": ps}


def test_run_exits_cleanly_and_prints_a_summary_per_channel(clean_run: dict[str, Any]) -> None:
    assert clean_run["returncode"] == 0, clean_run["stderr"][-3000:]
    for channel in ("trades", "l2_book", "ticker"):
        assert channel in clean_run["stdout"]
    assert "landed this run" in clean_run["stdout"]


def test_every_channel_of_both_exchanges_lands_parquet(clean_run: dict[str, Any]) -> None:
    lake = clean_run["tmp"] / "lake"
    for channel in ("trades", "l2_book", "ticker"):
        files = channel_files(lake, channel)
        exchanges = {p.parts[-4] for p in files}
        assert exchanges == {"exchange=BINANCE", "exchange=COINBASE"}, (channel, exchanges)
    out = cli("query", "select exchange, count(*) from trades group by 1 order by 1", "--lake", str(lake),
              "--format", "csv")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "exchange,count_star()" and [x.split(",")[0] for x in lines[1:]] == ["BINANCE", "COINBASE"]


def test_no_trade_lost_or_duplicated_against_what_the_simulator_sent(clean_run: dict[str, Any]) -> None:
    lake = clean_run["tmp"] / "lake"
    sent = json.loads((clean_run["tmp"] / "run" / "sim" / SIM_ACCOUNT_FILE).read_text())["stats"]
    df = run_query(lake, "select exchange, symbol, count(*) n, count(distinct id) d, max(id) m from trades "
                         "group by all")
    got = {(r.exchange, r.symbol): (r.n, r.d, r.m) for r in df.itertuples()}
    expected = {(ex, sym): (v["trades_sent"],) * 3 for ex, s in sent.items() for sym, v in s["symbols"].items()}
    assert got == expected
    assert all(n > RUN_SECONDS * 20 for n, _, _ in got.values())  # the market really ran


def test_book_rebuilt_from_the_lake_equals_the_simulators_top_20(clean_run: dict[str, Any]) -> None:
    lake = clean_run["tmp"] / "lake"
    books = json.loads((clean_run["tmp"] / "run" / "sim" / SIM_ACCOUNT_FILE).read_text())["books"]
    for exchange, symbols in books.items():
        for symbol, sim_book in symbols.items():
            rows = run_query(lake, f"select side, price, size, snapshot, ts_recv from l2_book where exchange = "
                                   f"'{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
            assert rows and rows[0]["snapshot"], (exchange, symbol)
            rebuilt = top(rebuild_book(rows), 20)
            assert len(rebuilt["bids"]) == 20 and len(rebuilt["asks"]) == 20
            assert rebuilt == sim_book, (exchange, symbol)


def test_health_metrics_status_and_process_names_while_running(clean_run: dict[str, Any]) -> None:
    code, health = clean_run["health"]
    assert code == 200 and health["status"] == "ok"
    assert {r["role"] for r in health["roles"]} == {"simulator", "bus", "aggregator", "featurizer",
                                                     "collector BINANCE", "collector COINBASE"}
    assert all(r["alive"] and r["pid"] for r in health["roles"])
    frames = [line for line in clean_run["metrics"].splitlines()
              if line.startswith('data_feed_frames_received_total{exchange="BINANCE"}')]
    assert frames and float(frames[0].split()[-1]) > 0
    assert "data_feed_records_cached_total" in clean_run["metrics"]
    assert clean_run["status"].returncode == 0
    assert "collector COINBASE" in clean_run["status"].stdout
    assert "df:stream:BINANCE:trades" in clean_run["status"].stdout
    for title in ("data-feed: collector BINANCE", "data-feed: collector COINBASE", "data-feed: aggregator",
                  "data-feed: simulator", "data-feed: featurizer", "data-feed: bus"):
        assert title in clean_run["ps"]


def test_config_history_records_the_start(clean_run: dict[str, Any]) -> None:
    from data_feed.access.db import config_history, make_engine
    from data_feed.contracts.config import load_config

    cfg = load_config(clean_run["config"])
    rows = config_history(make_engine(cfg.database.url))
    assert rows[0]["config_hash"] == cfg.config_hash()


def test_misspelled_key_fails_before_any_process_starts(tmp_path: Path) -> None:
    data = default_config_dict()
    data["spawner"]["run_dir"] = str(tmp_path / "run")
    data["exchanges"]["COINBASE"]["ticker"]["symbolz"] = ["BTC-USD"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = cli("run", "--config", str(path), "--duration", "5")
    assert out.returncode == 2
    assert "exchanges.COINBASE.ticker.symbolz: unknown key" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing was started: not even the run directory


def test_a_killed_collector_is_restarted_and_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = subprocess.Popen([CLI, "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        health = wait_health(tmp_path / "run", lambda h: h["status"] == "ok")
        victim = next(r for r in health["roles"] if r["role"] == "collector BINANCE")
        os.kill(victim["pid"], signal.SIGKILL)
        health = wait_health(tmp_path / "run", lambda h: any(
            r["role"] == "collector BINANCE" and r["restarts"] == 1 and r["alive"] for r in h["roles"]))
        restarted = next(r for r in health["roles"] if r["role"] == "collector BINANCE")
        assert restarted["pid"] != victim["pid"]
        time.sleep(5)  # the new collector reconnects and collects
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"collector BINANCE (pid {victim['pid']}) exited with code -9; restarting" in err
    assert not (tmp_path / "run" / "spawner.json").exists()
    assert run_query(tmp_path / "lake", "select count(*) from trades where exchange = 'BINANCE'").iloc[0, 0] > 0


def wait_health(run_dir: Path, ok: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            port = json.loads((run_dir / "spawner.json").read_text())["http_port"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                last = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            last = json.loads(err.read())
        except (OSError, ValueError):
            pass
        if last and ok(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"health never satisfied the condition; last: {last}")
