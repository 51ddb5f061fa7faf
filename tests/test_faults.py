"""Injected faults: `data-feed run` against a simulator that disconnects, skips a sequence number, sends a
malformed and a truncated frame, stalls past the watchdog and fails/slows book snapshots. The pipeline
recovers from each, writes a `gaps` row describing it, loses no trade outside a fault's window (trade ids),
duplicates none, and ends with books identical to the simulator's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from data_feed.access.query import run_query
from data_feed.runtime.spawner import SIM_ACCOUNT_FILE
from tests.conftest import ROOT, default_config_dict
from tests.harness import uncovered_missing_ids
from tests.test_pipeline import rebuild_book, top

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
RUN_SECONDS = 40
WATCHDOG_SECONDS = 4.0
FAULTS = {
    "malformed_after_frames": 300,
    "truncated_after_frames": 600,
    "sequence_gap_after_frames": 900,
    "disconnect_after_frames": 1300,
    "stall_after_frames": 1800,
    "stall_seconds": 6.0,
}
BINANCE_SNAPSHOT_FAULTS = {"snapshot_failures": 2, "snapshot_failure_status": 429, "snapshot_delay_seconds": 1.2}
NS = 1_000_000_000


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    data = default_config_dict()
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'df.db'}"
    for name, ex in data["exchanges"].items():
        ex["faults"] = {**FAULTS, **(BINANCE_SNAPSHOT_FAULTS if name == "BINANCE" else {})}
        ex["watchdog_seconds"] = WATCHDOG_SECONDS
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run([CLI, "run", "--config", str(config), "--duration", str(RUN_SECONDS), "--no-status"],
                         capture_output=True, text=True, timeout=RUN_SECONDS + 180)
    account = json.loads((tmp / "run" / "sim" / SIM_ACCOUNT_FILE).read_text())
    gaps = run_query(tmp / "lake", "select * from gaps order by ts_event")
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp / "run" / "logs").glob("*.log"))
    return {"tmp": tmp, "out": out, "account": account, "gaps": gaps, "logs": logs}


def gap_rows(run: dict[str, Any], exchange: str, reason: str) -> list[dict[str, Any]]:
    df = run["gaps"]
    rows: list[dict[str, Any]] = df[(df["exchange"] == exchange) & (df["reason"] == reason)].to_dict("records")
    return rows


def test_run_survives_every_fault_and_the_simulator_fired_them(faulty_run: dict[str, Any]) -> None:
    assert faulty_run["out"].returncode == 0, faulty_run["out"].stderr[-3000:]
    for exchange in ("BINANCE", "COINBASE"):
        fired = faulty_run["account"]["stats"][exchange]["faults"]
        expected = {"malformed", "truncated", "sequence_gap", "disconnect", "stall"}
        if exchange == "BINANCE":
            expected |= {"snapshot_failure", "snapshot_delay"}
        assert set(fired) == expected, (exchange, fired)


@pytest.mark.parametrize("exchange", ["BINANCE", "COINBASE"])
@pytest.mark.parametrize("reason", ["bad_frame", "sequence_gap", "disconnect", "stall"])
def test_each_fault_is_a_gaps_row(faulty_run: dict[str, Any], exchange: str, reason: str) -> None:
    rows = gap_rows(faulty_run, exchange, reason)
    assert rows, (exchange, reason, faulty_run["gaps"][["exchange", "reason"]].value_counts())
    assert all(r["symbol"] and r["channel"] and r["ts_event"] > 0 for r in rows)
    if reason == "sequence_gap":
        assert all(r["first_missing"] is not None and r["last_missing"] >= r["first_missing"] for r in rows)
        assert {r["channel"] for r in rows} >= {"l2_book"}
    if reason == "bad_frame":  # one malformed and one truncated frame, each on the one connection
        assert len({r["ts_event"] for r in rows}) == 2


def test_snapshot_failures_and_slow_snapshots_are_gaps_rows(faulty_run: dict[str, Any]) -> None:
    failed = gap_rows(faulty_run, "BINANCE", "snapshot_failed")
    assert len(failed) == BINANCE_SNAPSHOT_FAULTS["snapshot_failures"]
    assert all("429" in r["detail"] for r in failed)
    assert gap_rows(faulty_run, "BINANCE", "slow_snapshot")


def test_faults_are_counted_in_metrics(faulty_run: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(faulty_run["tmp"] / "run" / "metrics"))
    samples: dict[str, dict[tuple[str, ...], float]] = {}
    for family in registry.collect():
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.values()))] = s.value
    fired = samples["data_feed_sim_faults_total"]
    assert fired[tuple(sorted(("BINANCE", "stall")))] == 1
    assert fired[tuple(sorted(("COINBASE", "disconnect")))] == 1
    assert fired[tuple(sorted(("BINANCE", "snapshot_failure")))] == BINANCE_SNAPSHOT_FAULTS["snapshot_failures"]
    gaps = samples["data_feed_gaps_total"]
    for exchange in ("BINANCE", "COINBASE"):
        for reason in ("bad_frame", "sequence_gap", "disconnect", "stall"):
            counted = sum(v for k, v in gaps.items() if exchange in k and reason in k)
            assert counted == len(gap_rows(faulty_run, exchange, reason)), (exchange, reason)
    assert sum(v for k, v in samples["data_feed_bad_frames_total"].items() if "BINANCE" in k) >= 2


@pytest.mark.parametrize("exchange", ["BINANCE", "COINBASE"])
def test_no_trade_lost_outside_a_gaps_row_and_none_duplicated(faulty_run: dict[str, Any], exchange: str) -> None:
    """Every missing trade id lies in the id range of a gaps row (a reconnect or stall bounds the ids it may
    have lost by the last before it and the first after it), none is duplicated."""
    lake = faulty_run["tmp"] / "lake"
    stats = faulty_run["account"]["stats"][exchange]["symbols"]
    for symbol, sent in stats.items():
        df = run_query(lake, f"select id from trades where exchange = '{exchange}' and symbol = '{symbol}'")
        ids = df["id"].tolist()
        assert len(ids) == len(set(ids)), f"{exchange} {symbol}: duplicated trades"
        assert len(ids) == sent["trades_sent"] and max(ids) == sent["last_trade_id"], (exchange, symbol)
        assert not set(ids) & set(sent["dropped_trade_ids"])
        assert len(ids) > RUN_SECONDS * 10
    uncovered = {k: v for k, v in uncovered_missing_ids(lake).items() if k[0] == exchange}
    assert uncovered == {}
    bounded = gap_rows(faulty_run, exchange, "disconnect") + gap_rows(faulty_run, exchange, "stall")
    assert any(r["channel"] == "trades" and r["first_missing"] is not None and r["last_missing"] is not None
               for r in bounded)  # the outages' id ranges are known, not open-ended


def test_books_after_resync_equal_the_simulators(faulty_run: dict[str, Any]) -> None:
    lake: Path = faulty_run["tmp"] / "lake"
    for exchange, symbols in faulty_run["account"]["books"].items():
        for symbol, sim_book in symbols.items():
            rows = run_query(lake, f"select side, price, size, snapshot, ts_recv from l2_book where exchange = "
                                   f"'{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
            if exchange == "BINANCE":  # its snapshots carry the lastUpdateId: the first book and the resync
                resyncs = run_query(lake, f"select count(distinct sequence) from l2_book where exchange = "
                                          f"'{exchange}' and symbol = '{symbol}' and snapshot and sequence is not null")
                assert resyncs.iloc[0, 0] >= 2, (exchange, symbol)
            assert top(rebuild_book(rows), 20) == sim_book, (exchange, symbol)


# -- the same faults on Bybit, OKX and Kraken: sequence numbers and checksums drive their resyncs ---------------

NEW_PROTOCOLS: dict[str, tuple[list[str], str | None]] = {  # exchange -> (symbols, gaps reason of a dropped frame)
    "BYBIT": (["BTC-USDT-PERP", "ETH-USDT-PERP"], "sequence_gap"),
    "OKX": (["BTC-USDT", "ETH-USDT"], "checksum"),
    # Kraken's checksum covers only the top 10 levels: a lost change deeper down goes unseen until a resync.
    "KRAKEN": (["BTC-USD", "ETH-USD"], None),
}
NEW_FAULTS = {"malformed_after_frames": 300, "sequence_gap_after_frames": 700, "disconnect_after_frames": 1200}


@pytest.fixture(scope="module")
def faulty_new(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults-new")
    exchanges = {name: {"trades": {"symbols": syms}, "l2_book": {"symbols": syms}, "faults": NEW_FAULTS,
                        "watchdog_seconds": WATCHDOG_SECONDS} for name, (syms, _) in NEW_PROTOCOLS.items()}
    data = {"exchanges": exchanges,
            "lake": {"root": str(tmp / "lake"), "slice_seconds": 5, "allowed_lateness_seconds": 1},
            "spawner": {"http_port": 0, "run_dir": str(tmp / "run")}, "database": {"url": f"sqlite:///{tmp}/df.db"}}
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run([CLI, "run", "--config", str(config), "--duration", "30", "--no-status"],
                         capture_output=True, text=True, timeout=240)
    account = json.loads((tmp / "run" / "sim" / SIM_ACCOUNT_FILE).read_text())
    gaps = run_query(tmp / "lake", "select * from gaps order by ts_event")
    return {"tmp": tmp, "out": out, "account": account, "gaps": gaps}


@pytest.mark.parametrize("exchange", sorted(NEW_PROTOCOLS))
def test_new_protocols_survive_faults_with_gaps_rows(faulty_new: dict[str, Any], exchange: str) -> None:
    assert faulty_new["out"].returncode == 0, faulty_new["out"].stderr[-3000:]
    assert set(faulty_new["account"]["stats"][exchange]["faults"]) == {"malformed", "sequence_gap", "disconnect"}
    dropped_frame_reason = NEW_PROTOCOLS[exchange][1]
    for reason in ("bad_frame", "disconnect", *([dropped_frame_reason] if dropped_frame_reason else [])):
        assert gap_rows(faulty_new, exchange, reason), (exchange, reason)


@pytest.mark.parametrize("exchange", sorted(NEW_PROTOCOLS))
def test_new_protocols_books_resync_to_the_simulators(faulty_new: dict[str, Any], exchange: str) -> None:
    lake: Path = faulty_new["tmp"] / "lake"
    for symbol, sim_book in faulty_new["account"]["books"][exchange].items():
        rows = run_query(lake, f"select side, price, size, snapshot, ts_recv from l2_book where exchange = "
                               f"'{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
        assert top(rebuild_book(rows), 20) == sim_book, (exchange, symbol)


@pytest.mark.parametrize("exchange", sorted(NEW_PROTOCOLS))
def test_new_protocols_lose_no_trade_outside_a_disconnect(faulty_new: dict[str, Any], exchange: str) -> None:
    lake: Path = faulty_new["tmp"] / "lake"
    for symbol, sent in faulty_new["account"]["stats"][exchange]["symbols"].items():
        df = run_query(lake, f"select id, ts_event from trades where exchange = '{exchange}' and symbol = "
                             f"'{symbol}' order by ts_event")
        assert len(df) == sent["trades_sent"] > 100, (exchange, symbol)
        if exchange != "KRAKEN":  # Kraken trades carry no id
            ids = df["id"].tolist()
            assert len(ids) == len(set(ids)) and max(ids) == sent["last_trade_id"]
            missing = set(range(1, max(ids) + 1)) - set(ids)
            assert missing == set(sent["dropped_trade_ids"]), (exchange, symbol)
