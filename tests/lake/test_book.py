"""Self-contained l2_book slices against a real redis-server and real parquet: every slice file opens with the
full book, so each file decoded alone gives the same book as replaying every row from the start; `data-feed
book` prints the book at any instant."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis

from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.lake.book import Book, book_at, book_state, top
from data_feed.lake.layout import channel_files
from tests.conftest import ROOT, make_config

T0 = 1_700_000_000.0
SLICES = 5
MESSAGES_PER_SECOND = 100
KEY = stream_key("BINANCE", "l2_book")
Row = tuple[str, float, float, str, float, float, bool, int]


def _messages(seed: int = 7) -> list[list[Row]]:
    """A snapshot of 30 levels per side, then messages of 1-3 level changes, one per 10 ms."""
    rng = random.Random(seed)
    t = T0 + 0.005
    snap: list[Row] = [("BTC-USDT", t, t, side, 100.0 + sign * i, 1.0 + i, True, 1)
                       for side, sign in (("bid", -1), ("ask", 1)) for i in range(1, 31)]
    messages = [snap]
    for n in range(SLICES * MESSAGES_PER_SECOND - 1):
        t = T0 + 0.01 * (n + 1) + 0.005
        msg: list[Row] = []
        for _ in range(rng.randint(1, 3)):
            side = rng.choice(("bid", "ask"))
            price = 100.0 + (-1 if side == "bid" else 1) * rng.randint(1, 40)
            size = 0.0 if rng.random() < 0.4 else round(rng.uniform(0.1, 9.0), 3)
            if (side, price) not in {(r[3], r[4]) for r in msg}:
                msg.append(("BTC-USDT", t, t, side, price, size, False, n + 2))
        messages.append(msg)
    return messages


def _reference(messages: list[list[Row]], until: float) -> Book:
    book: Book = {"bid": {}, "ask": {}}
    for msg in messages:
        if msg[0][1] >= until:
            break
        if msg[0][6]:
            book = {"bid": {}, "ask": {}}
        for r in msg:
            book[r[3]].pop(r[4], None) if r[5] == 0 else book[r[3]].__setitem__(r[4], r[5])
    return book


def _land(tmp_path: Path, redis_url: str, messages: list[list[Row]], depth: int) -> Path:
    cfg = make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0,
                                      "book_snapshot_depth": depth})
    client = redis.Redis.from_url(redis_url)
    for i in range(0, len(messages), 37):  # entries that straddle slice boundaries
        client.xadd(KEY, encode_batch("l2_book", [r for m in messages[i:i + 37] for r in m]))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    return Path(cfg.lake.root)


def test_each_book_slice_decoded_alone_equals_the_replay_from_the_start(tmp_path: Path, redis_url: str) -> None:
    messages = _messages()
    lake = _land(tmp_path, redis_url, messages, depth=1000)
    files = channel_files(lake, "l2_book")
    assert len(files) == SLICES
    for i, path in enumerate(files):
        alone = pq.read_table(path).to_pandas()
        assert alone["snapshot"].iloc[0], path.name  # opens with the full book
        end = T0 + i + 1
        assert book_state(alone) == _reference(messages, end), path.name


def test_opening_snapshot_is_cut_to_the_configured_depth(tmp_path: Path, redis_url: str) -> None:
    lake = _land(tmp_path, redis_url, _messages(), depth=5)
    second = pq.read_table(channel_files(lake, "l2_book")[1]).to_pandas()
    opening = second[second["ts_recv"] == second["ts_recv"].iloc[0]]
    assert opening["snapshot"].all() and opening.groupby("side").size().to_dict() == {"ask": 5, "bid": 5}


def test_book_at_any_instant_matches_the_replay_and_the_cli_prints_it(tmp_path: Path, redis_url: str) -> None:
    messages = _messages()
    lake = _land(tmp_path, redis_url, messages, depth=1000)
    rng = random.Random(3)
    for at in [T0 + 0.5, T0 + 2.0001, *(T0 + rng.uniform(0.1, SLICES - 0.01) for _ in range(20))]:
        got = book_at(lake, "BINANCE", "BTC-USDT", round(at * 1e6) * 1000, 10)
        expected = top(_reference(messages, at + 1e-7), 10)
        assert got == expected, at
    at = T0 + 3.333
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "data-feed"), "book", "BINANCE", "BTC-USDT", "--at",
                          str(at), "--depth", "3", "--lake", str(lake)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    best = top(_reference(messages, at + 1e-7), 3)
    assert all(str(p) in out.stdout for p, _ in best["bid"] + best["ask"]), out.stdout


LAST_CHANGE = T0 + 0.01 * (SLICES * MESSAGES_PER_SECOND - 1) + 0.005  # the last message's time


def _book_cli(lake: Path, at: str) -> Any:
    from typer.testing import CliRunner

    from data_feed.cli import app

    return CliRunner().invoke(app, ["book", "BINANCE", "BTC-USDT", "--at", at, "--depth", "3", "--lake", str(lake)])


def test_book_before_the_first_row_is_an_error_naming_the_first_available_time(tmp_path: Path,
                                                                                 redis_url: str) -> None:
    lake = _land(tmp_path, redis_url, _messages(), depth=1000)
    for at, shown in ((str(T0 - 10), "2023-11-14T22:13:10Z"), ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z"),
                      (str(T0 + 0.004), "2023-11-14T22:13:20.004Z")):
        out = _book_cli(lake, at)
        assert out.exit_code == 1, out.stdout
        assert out.stderr == (f"error: exchange=BINANCE symbol=BTC-USDT: {shown} is before the first l2_book row "
                              "in the lake, at 2023-11-14T22:13:20.005Z\n")
    unknown = _book_cli(lake, "2023-11-14T22:13:21Z").exit_code, _book_cli(lake, "yesterday").stderr
    assert unknown[0] == 0 and unknown[1].startswith("error: --at 'yesterday': expected ISO-8601")


def test_book_after_the_data_is_the_last_book_and_says_its_age(tmp_path: Path, redis_url: str) -> None:
    messages = _messages()
    lake = _land(tmp_path, redis_url, messages, depth=1000)
    out = _book_cli(lake, str(LAST_CHANGE + 37.2))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines()[-1] == ("book as of 2023-11-14T22:13:24.995Z, 37.2 s before the requested time "
                                           "(the lake's l2_book data for it ends there)")
    best = top(_reference(messages, LAST_CHANGE + 1), 3)
    assert all(str(p) in out.stdout for p, _ in best["bid"] + best["ask"]), out.stdout
    far = _book_cli(lake, "1e30")
    assert far.exit_code == 0 and "book as of 2023-11-14T22:13:24.995Z, " in far.stdout
    assert far.stdout.rstrip().endswith("days before the requested time (the lake's l2_book data for it ends there)")


def test_book_prints_utc_times_and_takes_iso_or_epoch_seconds(tmp_path: Path, redis_url: str) -> None:
    lake = _land(tmp_path, redis_url, _messages(), depth=1000)
    iso, epoch = _book_cli(lake, "2023-11-14T22:13:23.333Z"), _book_cli(lake, str(T0 + 3.333))
    assert iso.exit_code == epoch.exit_code == 0
    assert iso.stdout == epoch.stdout
    assert iso.stdout.splitlines()[0] == "BINANCE BTC-USDT at 2023-11-14T22:13:23.333Z"
    assert iso.stdout.splitlines()[-1] == "book as of 2023-11-14T22:13:23.325Z, 0.008 s before the requested time"
