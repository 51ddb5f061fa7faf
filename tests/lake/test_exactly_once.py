"""Aggregator commit protocol against a real redis-server: a crash at any step, then a restart, leaves
every record in the lake exactly once; late records land in an additional part."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from data_feed.access.query import run_query
from data_feed.aggregator.ledger import JournalRecord
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import CONSUMER_GROUP, encode_batch, journal_key, stream_key
from data_feed.contracts.config import Config
from data_feed.lake.catalog import LocalCatalog
from data_feed.lake.layout import LocalStore, channel_files
from tests.conftest import make_config

T0 = 1_700_000_000.0  # a whole second
KEY = stream_key("BINANCE", "trades")


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs."""


def _config(tmp_path: Path) -> Config:
    return make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})


def _add(client: redis.Redis, first_id: int, n: int, t_start: float, step: float,
         symbols: tuple[str, ...] = ("BTC-USDT",)) -> None:
    """One stream entry of ``n`` trades per symbol, ids first_id.., times t_start + i*step."""
    rows = [(sym, t_start + i * step, t_start + i * step, first_id + i, None, "buy", 100.0, 1.0)
            for i in range(n) for sym in symbols]
    client.xadd(KEY, encode_batch("trades", rows))  # type: ignore[arg-type]


def _fill(client: redis.Redis, entries: int = 12, per_entry: int = 50) -> int:
    """Per symbol, entries of 0.4 s each over 1 s slices, so many entries span two slices and an entry can be
    acknowledged (its slices all written) while a later one sharing its first slice is not."""
    for e in range(entries):
        for sym in ("BTC-USDT", "ETH-USDT"):
            _add(client, 1 + e * per_entry, per_entry, T0 + 0.3 + e * 0.4, 0.4 / per_entry, (sym,))
    return entries * per_entry


def _counts(cfg: Config) -> dict[str, tuple[int, int, int]]:
    df = run_query(cfg.lake.root, "select symbol, count(*) n, count(distinct id) d, max(id) m from trades group by 1")
    return {r.symbol: (r.n, r.d, r.m) for r in df.itertuples()}


def _restart_and_drain(cfg: Config, client: redis.Redis) -> Aggregator:
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.recover_pending()
    agg.drain()
    return agg


def test_entry_spanning_two_slices_is_not_duplicated_when_killed_between_them(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old bug: S1 written (holding B's S1 records), death before S2; B re-read must not re-land S1 rows."""
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    _add(client, 1, 10, T0 + 0.5, 0.01)  # A: all in S1
    _add(client, 11, 10, T0 + 0.95, 0.01)  # B: S1 and S2
    _add(client, 21, 10, T0 + 2.5, 0.01)  # C: moves the watermark past S1 and S2
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()
    writes: list[Any] = []
    real_write = crashed.write

    def write_once_then_die(sk: Any) -> bool:
        if writes:
            raise Crash("killed before the second slice")
        writes.append(sk)
        return real_write(sk)

    monkeypatch.setattr(crashed, "write", write_once_then_die)
    with pytest.raises(Crash):
        crashed.step(None)
    assert len(channel_files(Path(cfg.lake.root), "trades")) == 1
    _restart_and_drain(cfg, client)
    assert _counts(cfg) == {"BTC-USDT": (30, 30, 30)}


CRASH_POINTS: dict[str, Callable[[pytest.MonkeyPatch, Callable[..., None]], None]] = {
    "after intent, before the file": lambda mp, die: mp.setattr(LocalStore, "write_slice", die),
    "file renamed, before the catalog": lambda mp, die: mp.setattr(LocalCatalog, "register", die),
    "registered, before the commit": lambda mp, die: mp.setattr(Aggregator, "_commit", die),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
@pytest.mark.parametrize("nth", [1, 3, 6])
def test_crash_at_each_step_of_the_nth_write_then_restart_lands_every_record_once(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, point: str, nth: int) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    n = _fill(client)
    calls = [0]
    original = {"after intent, before the file": LocalStore.write_slice,
                "file renamed, before the catalog": LocalCatalog.register,
                "registered, before the commit": Aggregator._commit}[point]

    def maybe_die(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            raise Crash(point)
        return original(*args, **kwargs)

    CRASH_POINTS[point](monkeypatch, maybe_die)
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()
    with pytest.raises(Crash):
        while crashed.step(None):
            pass
        crashed.drain()
    monkeypatch.undo()
    assert client.hlen(journal_key(KEY)) >= 1  # the intent of the interrupted write survived the crash
    _restart_and_drain(cfg, client)
    assert _counts(cfg) == {"BTC-USDT": (n, n, n), "ETH-USDT": (n, n, n)}
    assert client.xpending(KEY, CONSUMER_GROUP)["pending"] == 0
    assert client.hlen(journal_key(KEY)) == 0  # every record settled and forgotten
    catalogued = {f.path for f in LocalCatalog(cfg.lake.root).files("trades")}
    on_disk = {str(p.relative_to(cfg.lake.root)) for p in channel_files(Path(cfg.lake.root), "trades")}
    assert catalogued == on_disk


def test_repeated_crashes_during_recovery_still_land_once(tmp_path: Path, redis_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    n = _fill(client)
    for nth in (2, 1, 1, 3):  # each run dies at its nth commit, the next one recovers from that
        monkeypatch.setattr(Aggregator, "_commit", _wrap_commit(nth))
        agg = Aggregator(cfg, client)
        agg.ensure_groups()
        with pytest.raises(Crash):
            agg.recover_pending()
            while agg.step(None):
                pass
            agg.drain()
        monkeypatch.undo()
    _restart_and_drain(cfg, client)
    assert _counts(cfg) == {"BTC-USDT": (n, n, n), "ETH-USDT": (n, n, n)}


def _wrap_commit(nth: int) -> Callable[..., None]:
    original = Aggregator._commit
    calls = [0]

    def commit(self: Aggregator, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == nth:
            raise Crash(f"commit {nth}")
        original(self, *args, **kwargs)

    return commit


def test_records_after_their_slice_was_written_land_in_an_additional_part(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    _add(client, 1, 10, T0 + 0.1, 0.01)  # S0
    _add(client, 11, 10, T0 + 1.5, 0.01)  # S1: watermark passes S0's end
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.step(None)
    s0 = [p for p in channel_files(Path(cfg.lake.root), "trades") if p.name.startswith("20231114T221320Z")]
    assert len(s0) == 1
    _add(client, 21, 5, T0 + 0.5, 0.01)  # late for S0
    agg.drain()
    s0 = [p for p in channel_files(Path(cfg.lake.root), "trades") if p.name.startswith("20231114T221320Z")]
    assert len(s0) == 2
    assert _counts(cfg) == {"BTC-USDT": (25, 25, 25)}


def test_acknowledged_entries_are_trimmed_from_the_stream(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    for e in range(300):
        _add(client, 1 + e * 10, 10, T0 + e * 0.1, 0.005)
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    assert client.xpending(KEY, CONSUMER_GROUP)["pending"] == 0
    assert client.xlen(KEY) < 300  # trimmed (approximately: whole stream nodes) once durable
    assert _counts(cfg) == {"BTC-USDT": (3000, 3000, 3000)}


def test_an_interrupted_write_whose_entries_were_trimmed_becomes_a_gap_not_a_crash_loop(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    _add(client, 1, 10, T0 + 0.1, 0.01)
    _add(client, 11, 10, T0 + 2.5, 0.01)  # moves the watermark past the first slice
    monkeypatch.setattr(LocalStore, "write_slice", lambda *a, **k: (_ for _ in ()).throw(Crash("killed")))
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()
    with pytest.raises(Crash):
        crashed.step(None)
    monkeypatch.undo()
    (path, raw), = client.hgetall(journal_key(KEY)).items()
    client.xdel(KEY, *JournalRecord.unpack(raw).entries)  # gone before the redo: trimmed, or lost by Redis
    _restart_and_drain(cfg, client)
    assert client.hlen(journal_key(KEY)) == 0  # the journal record was dropped, the aggregator went on
    assert _counts(cfg) == {"BTC-USDT": (10, 10, 20)}  # the later entry landed
    gaps = run_query(cfg.lake.root, "select symbol, channel, reason, detail, missing_from_ts from gaps")
    assert gaps[["symbol", "channel", "reason"]].values.tolist() == [["BTC-USDT", "trades", "lost_entries"]]
    assert path.decode() in gaps["detail"][0] and gaps["missing_from_ts"][0] == int(T0) * 1_000_000_000
