"""Replay: each recorded real session, served through `data-feed replay` (simulator -> cryptofeed collector ->
Redis -> aggregator -> lake), lands exactly the trades and the book cryptofeed parses directly from the recording."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
import yaml
from cryptofeed.connection import WSAsyncConn
from cryptofeed.defines import L2_BOOK, TRADES
from cryptofeed.symbols import Symbols
from cryptofeed.types import OrderBook, Trade

from data_feed.collector import CRYPTOFEED_CHANNEL
from data_feed.collector.exchanges import EXCHANGE_MODULES, Endpoints, feed_config
from data_feed.collector.exchanges.replay import base_class
from data_feed.config import load_config
from data_feed.query import run_query
from data_feed.replay import replay_config
from data_feed.sim.replay import ExchangeReplay
from data_feed.sim.session import Session, http_candidates, load_session, match_connection
from tests.conftest import CAPTURES, ROOT, default_config_dict
from tests.test_pipeline import rebuild_book, top

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
CAPTURE_FILES = sorted(CAPTURES.glob("*.jsonl.zst"))
BOOK_DEPTH = 20


def write_config(tmp: Path) -> Path:
    data = default_config_dict()
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'df.db'}"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def replay_cli(tmp: Path, *files: Path, speed: str = "max") -> subprocess.CompletedProcess[str]:
    config = write_config(tmp)
    return subprocess.run([CLI, "replay", *map(str, files), "--speed", speed, "--lake", str(tmp / "lake"),
                           "--config", str(config)], capture_output=True, text=True, timeout=600)


# -- the reference: cryptofeed's class fed the recording directly, no network, no pipeline ------------


class DirectParse:
    """Trades and books as the collector's cryptofeed class parses them straight from a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trades: dict[str, list[Any]] = defaultdict(list)
        self.books: dict[str, OrderBook] = {}

    async def trade(self, t: Trade, receipt: float) -> None:
        try:
            self.trades[t.symbol].append(int(t.id))
        except (TypeError, ValueError):
            self.trades[t.symbol].append(str(t.id))

    async def book(self, b: OrderBook, receipt: float) -> None:
        self.books[b.symbol] = b

    def _load_symbols(self, cls: Any) -> None:
        answers = []
        routes = cls.rest_endpoints[0].route("instruments")
        for url in routes if isinstance(routes, list) else [routes]:
            parts = urlsplit(url)
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            answers.append(json.loads(http_candidates(self.session, parts.path, query)[0].data))
        Symbols.set(cls.id, *cls._parse_symbol_data(answers if len(answers) > 1 else answers[0]))

    async def run(self, subscription: dict[str, list[str]], max_depth: int) -> None:
        exchange = self.session.exchange
        cls = base_class(exchange, EXCHANGE_MODULES.get(exchange))
        self._load_symbols(cls)
        rest = ExchangeReplay(self.session, None)

        async def read(address: str, **kwargs: Any) -> str:
            parts = urlsplit(address)
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            found = rest.respond(parts.path, query)
            assert found is not None, address
            return found.data

        feed = cls(subscription=subscription, callbacks={TRADES: self.trade, L2_BOOK: self.book},
                   max_depth=max_depth, candle_closed_only=False,
                   config={"log": {"disabled": True}, **feed_config(exchange, Endpoints("https://x", "wss://x"))})
        feed.http_conn.read = read
        conns = await self._connections(feed)
        frames = sorted((ts, i, c.conn, data) for c in self.session.connections for i, (ts, data) in
                        enumerate(c.frames))
        for ts, _, name, data in frames:
            if name in conns:
                await feed.message_handler(data, conns[name], ts)

    async def _connections(self, feed: Any) -> dict[str, WSAsyncConn]:
        async def no_write(data: str) -> None:
            return None

        out = {}
        for conn, subscribe, _handler, _auth in feed.connect():
            parts = urlsplit(conn.address)
            record = match_connection(self.session.connections, parts.path, parts.query)
            assert record is not None, conn.address
            conn.write = no_write
            await subscribe(conn)
            out[record.conn] = conn
        return out


def direct_parse(path: Path, tmp: Path) -> tuple[DirectParse, dict[str, list[str]]]:
    session = load_session(path)
    cfg = replay_config(load_config(write_config(tmp)), [path], None, None)
    ex = cfg.exchanges[session.exchange]
    subscription = {CRYPTOFEED_CHANNEL[n]: list(ch.symbols) for n, ch in ex.channels().items()
                    if n in ("trades", "l2_book")}
    parsed = DirectParse(session)
    asyncio.run(parsed.run(subscription, ex.l2_book.max_depth if ex.l2_book else 0))
    return parsed, subscription


@pytest.fixture(scope="module", params=CAPTURE_FILES, ids=lambda p: p.name.split(".")[0])
def replayed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path: Path = request.param
    tmp = tmp_path_factory.mktemp(path.name.split(".")[0])
    out = replay_cli(tmp, path)
    parsed, subscription = direct_parse(path, tmp_path_factory.mktemp("direct"))
    return {"path": path, "tmp": tmp, "out": out, "parsed": parsed, "subscription": subscription}


def test_captures_are_present() -> None:
    assert len(CAPTURE_FILES) == 4, CAPTURES


def test_replay_serves_every_frame_and_prints_a_summary_per_channel(replayed: dict[str, Any]) -> None:
    out = replayed["out"]
    assert out.returncode == 0, out.stderr[-3000:]
    session = load_session(replayed["path"])
    assert f"{session.exchange}: served {session.frames_total:,} of {session.frames_total:,} frames" in out.stdout
    assert "landed this run" in out.stdout and "trades" in out.stdout and "l2_book" in out.stdout


def test_lake_trades_equal_cryptofeeds_direct_parse(replayed: dict[str, Any]) -> None:
    exchange = load_session(replayed["path"]).exchange
    df = run_query(replayed["tmp"] / "lake", f"select symbol, id, id_text from trades where exchange = '{exchange}'")
    lake: dict[str, list[Any]] = defaultdict(list)
    for r in df.to_dict("records"):
        lake[r["symbol"]].append(r["id_text"] if pd.isna(r["id"]) else int(r["id"]))
    expected = replayed["parsed"].trades
    assert sum(map(len, expected.values())) > 0, "the recording holds trades"
    assert {s: sorted(v, key=str) for s, v in lake.items()} == {s: sorted(v, key=str) for s, v in expected.items()}


def test_lake_book_rebuilds_cryptofeeds_final_book(replayed: dict[str, Any]) -> None:
    exchange = load_session(replayed["path"]).exchange
    books = replayed["parsed"].books
    assert books, "the recording holds books"
    for symbol, book in books.items():
        rows = run_query(replayed["tmp"] / "lake", f"select side, price, size, snapshot, ts_recv from l2_book where "
                         f"exchange = '{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
        assert rows and rows[0]["snapshot"], (exchange, symbol)
        data = book.book.to_dict()
        expected = top({"bid": {float(p): float(s) for p, s in data["bid"].items()},
                        "ask": {float(p): float(s) for p, s in data["ask"].items()}}, BOOK_DEPTH)
        assert top(rebuild_book(rows), BOOK_DEPTH) == expected, (exchange, symbol)


# -- a session recorded from the simulator replays into the same lake ------------------------------------

RECORD_SECONDS = 8
COMPARED_CHANNELS = ("trades", "l2_book", "ticker")


SLICE_NS = 5 * 1_000_000_000  # write_config's lake.slice_seconds


def lake_rows(lake: Path, channel: str) -> list[tuple[Any, ...]]:
    """Every row but its local receive time; ts_event too where it is local (the exchange sent no time).

    l2_book slices open with a snapshot the aggregator derives from the lake (stamped at the slice start,
    no sequence): it is not exchange data, and is left out.
    """
    df = run_query(lake, f"select * exclude (date) from {channel}")
    if channel == "l2_book":
        derived = df["snapshot"] & df["sequence"].isna() & (df["ts_event"] % SLICE_NS == 0)
        df = df[~derived].reset_index(drop=True)
    local = df["ts_event"] == df["ts_recv"]
    df["ts_event"] = df["ts_event"].where(~local, -1)
    df = df.drop(columns=["ts_recv"]).astype(object).where(df.drop(columns=["ts_recv"]).notna(), None)
    return sorted(map(tuple, df.itertuples(index=False)), key=repr)


@pytest.fixture(scope="module")
def recorded_and_replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    live = tmp_path_factory.mktemp("live")
    sessions = live / "sessions"
    rec = subprocess.run([CLI, "record", "--out", str(sessions), "--config", str(write_config(live)),
                          "--duration", str(RECORD_SECONDS), "--no-status"], capture_output=True, text=True,
                         timeout=300)
    files = sorted(sessions.glob("*.jsonl.zst"))
    replay_tmp = tmp_path_factory.mktemp("replayed")
    out = replay_cli(replay_tmp, *files)
    return {"record": rec, "files": files, "live": live / "lake", "replay": replay_tmp / "lake", "out": out}


def test_record_writes_one_session_per_exchange(recorded_and_replayed: dict[str, Any]) -> None:
    rec = recorded_and_replayed["record"]
    assert rec.returncode == 0, rec.stderr[-3000:]
    sessions = [load_session(f) for f in recorded_and_replayed["files"]]
    assert sorted(s.exchange for s in sessions) == ["BINANCE", "COINBASE"]
    for s in sessions:
        assert s.frames_total > 50 and s.http, s.exchange
        assert set(s.config) == set(COMPARED_CHANNELS)


def test_replay_of_a_recorded_simulator_session_lands_the_same_rows(recorded_and_replayed: dict[str, Any]) -> None:
    assert recorded_and_replayed["out"].returncode == 0, recorded_and_replayed["out"].stderr[-3000:]
    for channel in COMPARED_CHANNELS:
        live = lake_rows(recorded_and_replayed["live"], channel)
        again = lake_rows(recorded_and_replayed["replay"], channel)
        assert len(live) > 20, channel
        assert again == live, channel


def test_replay_at_a_given_speed_keeps_the_recorded_pace(tmp_path: Path) -> None:
    """BINANCE.jsonl.zst's frames span 30 s; at --speed 4 serving them takes at least 7.5 s, and lands the same
    trades as cryptofeed's direct parse."""
    capture = CAPTURES / "BINANCE.jsonl.zst"
    session = load_session(capture)
    span = max(ts for c in session.connections for ts, _ in c.frames) - session.first_ts
    started = time.monotonic()
    out = replay_cli(tmp_path, capture, speed="4")
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    assert elapsed >= span / 4
    trades = run_query(tmp_path / "lake", "select count(distinct id) from trades").iloc[0, 0]
    (tmp_path / "direct").mkdir()
    assert trades == sum(len(v) for v in direct_parse(capture, tmp_path / "direct")[0].trades.values())
