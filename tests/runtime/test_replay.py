"""Replay: every recorded session, served through `data-feed replay` (simulator -> cryptofeed collector -> Redis ->
aggregator -> lake, and the featurizer), lands exactly the trades and the book cryptofeed parses directly from the
recording, the same rows on each of three replays at --speed max, and the same features at every speed.

Recordings: the four captures, and two built here that they do not cover: a Huobi session of gzip-compressed
binary frames (from the simulator's market) and a Kraken session recorded from the simulator with two connections
to one address, trades without ids and a REST path renamed from the plural cryptofeed 2.4.1 asks to a singular.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
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

from data_feed.access.query import run_query
from data_feed.collector.callbacks import CRYPTOFEED_CHANNEL
from data_feed.collector.exchanges import EXCHANGE_MODULES, Endpoints, feed_config
from data_feed.collector.exchanges.replay import base_class
from data_feed.contracts.capture import Session, load_session
from data_feed.contracts.config import load_config
from data_feed.runtime.replay import replay_config
from data_feed.sim.replay import ExchangeReplay
from data_feed.sim.session import best_by_address, closest_by_sends, http_candidates
from tests.conftest import CAPTURES, ROOT, default_config_dict
from tests.replay_recordings import huobi_session, rename_rest_path
from tests.test_pipeline import rebuild_book, top

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
CAPTURE_FILES = sorted(CAPTURES.glob("*.jsonl.zst"))
BOOK_DEPTH = 20
REPLAY_TIMEOUT_SECONDS = 600
SPEEDS = ("max", "max", "max", "10")  # three at max speed (determinism), one at a recorded pace
BUILT = ("HUOBI-gzip", "KRAKEN-split")  # short: the run directories hold ipc sockets (paths of <= 107 bytes)
KRAKEN_SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD", "DOT-USD", "LTC-USD", "XRP-USD", "LINK-USD",
                  "ATOM-USD", "AVAX-USD", "UNI-USD", "DOGE-USD"]  # 24 subscriptions: cryptofeed opens 2 connections
SIMULATOR_RECORD_SECONDS = 6
NS = 1_000_000_000


def write_config(tmp: Path) -> Path:
    data = default_config_dict()
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'df.db'}"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def replay_argv(tmp: Path, files: list[Path], speed: str) -> list[str]:
    return [CLI, "replay", *map(str, files), "--speed", speed, "--lake", str(tmp / "lake"),
            "--config", str(write_config(tmp))]


def replay_cli(tmp: Path, *files: Path, speed: str = "max") -> subprocess.CompletedProcess[str]:
    return subprocess.run(replay_argv(tmp, list(files), speed), capture_output=True, text=True,
                          timeout=REPLAY_TIMEOUT_SECONDS)


@dataclass
class Run:
    speed: str
    tmp: Path
    out: subprocess.CompletedProcess[str]

    @property
    def lake(self) -> Path:
        return self.tmp / "lake"


def replay_runs(base: Path, path: Path, speeds: tuple[str, ...]) -> list[Run]:
    """Replays of one recording at each speed, all at once (the machine's load varies their timing further)."""
    started = []
    for i, speed in enumerate(speeds):
        tmp = base / f"r{i}-{speed}"
        tmp.mkdir(parents=True)
        stdout, stderr = open(tmp / "stdout", "w"), open(tmp / "stderr", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(replay_argv(tmp, [path], speed), stdout=stdout, stderr=stderr, text=True)
        started.append((speed, tmp, proc, stdout, stderr))
    runs = []
    for speed, tmp, proc, stdout, stderr in started:
        code = proc.wait(timeout=REPLAY_TIMEOUT_SECONDS)
        stdout.close()
        stderr.close()
        out = subprocess.CompletedProcess(proc.args, code, (tmp / "stdout").read_text(), (tmp / "stderr").read_text())
        runs.append(Run(speed, tmp, out))
    return runs


# -- the reference: cryptofeed's class fed the recording directly, no network, no pipeline ------------


def trade_key(trade_id: Any, ts: float, price: float, amount: float, side: str) -> Any:
    """A trade's id; for trades without one (Kraken), what the exchange sent about it."""
    if trade_id is None or (isinstance(trade_id, float) and pd.isna(trade_id)):
        return ("no id", round(ts * 1e6), float(price), float(amount), side)
    try:
        return int(trade_id)
    except (TypeError, ValueError):
        return str(trade_id)


class DirectParse:
    """Trades and books as the collector's cryptofeed class parses them straight from a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trades: dict[str, list[Any]] = defaultdict(list)
        self.books: dict[str, OrderBook] = {}

    async def trade(self, t: Trade, receipt: float) -> None:
        self.trades[t.symbol].append(trade_key(t.id, float(t.timestamp), t.price, t.amount, t.side))

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
        for ts, ci, j in self.session.frame_order():  # recorded time order across connections
            record = self.session.connections[ci]
            if record.conn in conns:
                await feed.message_handler(record.frames[j][1], conns[record.conn], ts)

    async def _connections(self, feed: Any) -> dict[str, WSAsyncConn]:
        """Each cryptofeed connection paired with its recorded one: by address, then (several recorded at one
        address) by the subscription frames it writes."""
        out: dict[str, WSAsyncConn] = {}
        for conn, subscribe, _handler, _auth in feed.connect():
            written: list[str | bytes] = []

            async def keep(data: str, written: list[str | bytes] = written) -> None:
                written.append(data)

            conn.write = keep
            await subscribe(conn)
            parts = urlsplit(conn.address)
            free = [c for c in self.session.connections if c.conn not in out]
            record = closest_by_sends(best_by_address(free, parts.path, parts.query), written)
            assert record is not None, conn.address
            out[record.conn] = conn
        return out


def direct_parse(path: Path, tmp: Path) -> DirectParse:
    session = load_session(path)
    cfg = replay_config(load_config(write_config(tmp)), [path], None, None)
    ex = cfg.exchanges[session.exchange]
    subscription = {CRYPTOFEED_CHANNEL[n]: list(ch.symbols) for n, ch in ex.channels().items()
                    if n in ("trades", "l2_book")}
    parsed = DirectParse(session)
    asyncio.run(parsed.run(subscription, ex.l2_book.max_depth if ex.l2_book else 0))
    return parsed


# -- recordings the captures do not cover -------------------------------------------------------------


def simulator_config(tmp: Path, exchanges: dict[str, Any]) -> Path:
    data = yaml.safe_load(write_config(tmp).read_text())
    data["exchanges"] = exchanges
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def record_from_simulator(tmp: Path, exchanges: dict[str, Any], seconds: int) -> list[Path]:
    sessions = tmp / "sessions"
    rec = subprocess.run([CLI, "record", "--out", str(sessions), "--config", str(simulator_config(tmp, exchanges)),
                          "--duration", str(seconds), "--no-status"], capture_output=True, text=True, timeout=300)
    assert rec.returncode == 0, rec.stderr[-3000:]
    return sorted(sessions.glob("*.jsonl.zst"))


@pytest.fixture(scope="module")
def kraken_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kraken from the simulator: 24 subscriptions (cryptofeed's limit is 20 per connection), so two connections to
    one address; Kraken trades carry no id. The recording then answers /0/public/AssetPair, not AssetPairs."""
    tmp = tmp_path_factory.mktemp("kraken-recorded")
    market = {"trades_per_second": 10, "book_updates_per_second": 20, "levels": 50}
    exchanges = {"KRAKEN": {"source": "simulator", "trades": {"symbols": KRAKEN_SYMBOLS}, "market": market,
                            "l2_book": {"symbols": KRAKEN_SYMBOLS, "max_depth": 100}}}
    (recorded,) = record_from_simulator(tmp, exchanges, SIMULATOR_RECORD_SECONDS)
    session = load_session(recorded)
    assert len(session.connections) == 2 and len({c.addr for c in session.connections}) == 1
    return rename_rest_path(recorded, tmp / "KRAKEN-singular.jsonl.zst", "AssetPairs", "AssetPair")


def recording(name: str, request: pytest.FixtureRequest, tmp: Path) -> Path:
    if name == BUILT[0]:
        return huobi_session(tmp / "HUOBI.jsonl.zst")
    if name == BUILT[1]:
        path: Path = request.getfixturevalue("kraken_recording")
        return path
    return CAPTURES / f"{name}.jsonl.zst"


@pytest.fixture(scope="module", params=[p.name.split(".")[0] for p in CAPTURE_FILES] + list(BUILT))
def replayed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    name: str = request.param
    tmp = tmp_path_factory.mktemp(name)
    path = recording(name, request, tmp)
    runs = replay_runs(tmp, path, SPEEDS + (("1",) if name == BUILT[0] else ()))  # Huobi's is 6 s long
    return {"path": path, "runs": runs, "parsed": direct_parse(path, tmp_path_factory.mktemp("direct"))}


def test_captures_are_present() -> None:
    """The four captures the suite was built with; any other recording put beside them is replayed too."""
    names = {p.name.removesuffix(".jsonl.zst") for p in CAPTURE_FILES}
    assert {"BINANCE", "BINANCE_FUTURES", "BYBIT", "COINBASE"} <= names, CAPTURES


def test_replay_serves_every_frame_and_prints_a_summary_per_channel(replayed: dict[str, Any]) -> None:
    session = load_session(replayed["path"])
    for run in replayed["runs"]:
        assert run.out.returncode == 0, (run.speed, run.out.stderr[-3000:])
        assert f"{session.exchange}: served {session.frames_total:,} of {session.frames_total:,} frames" in \
            run.out.stdout, run.speed
        assert "landed this run" in run.out.stdout and "trades" in run.out.stdout and "l2_book" in run.out.stdout


def lake_trades(lake: Path, exchange: str) -> dict[str, list[Any]]:
    df = run_query(lake, f"select symbol, id, id_text, ts_event, price, amount, side from trades "
                   f"where exchange = '{exchange}'")
    out: dict[str, list[Any]] = defaultdict(list)
    for r in df.to_dict("records"):
        trade_id = r["id_text"] if pd.isna(r["id"]) else r["id"]
        out[r["symbol"]].append(trade_key(trade_id, r["ts_event"] / NS, r["price"], r["amount"], r["side"]))
    return out


def test_every_replay_lands_cryptofeeds_direct_parse_of_the_trades(replayed: dict[str, Any]) -> None:
    exchange = load_session(replayed["path"]).exchange
    expected = replayed["parsed"].trades
    assert sum(map(len, expected.values())) > 0, "the recording holds trades"
    want = {s: sorted(v, key=str) for s, v in expected.items()}
    for run in replayed["runs"]:
        assert {s: sorted(v, key=str) for s, v in lake_trades(run.lake, exchange).items()} == want, run.speed


def test_every_replay_rebuilds_cryptofeeds_final_book(replayed: dict[str, Any]) -> None:
    exchange = load_session(replayed["path"]).exchange
    books = replayed["parsed"].books
    assert books, "the recording holds books"
    for run in replayed["runs"]:
        for symbol, book in books.items():
            rows = run_query(run.lake, f"select side, price, size, snapshot, ts_recv from l2_book where "
                             f"exchange = '{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
            assert rows and rows[0]["snapshot"], (run.speed, symbol)
            data = book.book.to_dict()
            expected = top({"bid": {float(p): float(s) for p, s in data["bid"].items()},
                            "ask": {float(p): float(s) for p, s in data["ask"].items()}}, BOOK_DEPTH)
            assert top(rebuild_book(rows), BOOK_DEPTH) == expected, (run.speed, symbol)


GAPS_LOCAL_COLUMNS = "ts_event, ts_recv, detail"  # when the replay saw a gap: its own time, not the recording's


def all_rows(lake: Path) -> dict[str, pd.DataFrame]:
    """Every channel's rows (receive times included: they are the recording's), features aside, and without
    the book snapshots the aggregator derives for each l2_book file (how many files a slice has depends on when
    its records reached the aggregator; they are stamped off the microsecond grid, data_feed.lake.book)."""
    out = {}
    for channel in sorted(p.name for p in lake.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if channel == "features":
            continue
        local = f", {GAPS_LOCAL_COLUMNS}" if channel == "gaps" else ""
        derived = " where not (snapshot and ts_recv % 1000 <> 0)" if channel == "l2_book" else ""
        out[channel] = run_query(lake, f"select * exclude (date{local}) from {channel}{derived} order by all")
    return out


def test_three_replays_at_max_speed_land_identical_rows(replayed: dict[str, Any]) -> None:
    first, *others = [run for run in replayed["runs"] if run.speed == "max"]
    want = all_rows(first.lake)
    assert {"trades", "l2_book"} <= set(want)
    for run in [*others, *[r for r in replayed["runs"] if r.speed != "max"]]:
        got = all_rows(run.lake)
        assert set(got) == set(want), run.speed
        for channel, rows in want.items():
            pd.testing.assert_frame_equal(got[channel], rows, obj=f"{channel} at --speed {run.speed}")


def features(lake: Path) -> pd.DataFrame:
    return run_query(lake, "select * exclude (ts_recv, date) from features order by all")


def test_features_are_the_same_at_every_speed_and_count_every_trade(replayed: dict[str, Any]) -> None:
    runs = replayed["runs"]
    want = features(runs[0].lake)
    trades = run_query(runs[0].lake, "select exchange, symbol, count(*) as n from trades group by all")
    counted = want[want["interval"] == "1s"].groupby(["exchange", "symbol"])["trade_count"].sum().to_dict()
    landed = trades.set_index(["exchange", "symbol"])["n"].to_dict()
    keys = counted | landed
    assert landed and {k: landed.get(k, 0) for k in keys} == {k: counted.get(k, 0) for k in keys}
    for run in runs[1:]:
        pd.testing.assert_frame_equal(features(run.lake), want, obj=f"features at --speed {run.speed}")


def test_receive_times_are_the_recordings_at_every_speed(replayed: dict[str, Any]) -> None:
    session = load_session(replayed["path"])
    recorded = [ts for c in session.connections for ts, _ in c.frames] + [r.ts for r in session.http]
    for run in replayed["runs"]:
        got = run_query(run.lake, "select min(ts_recv) as lo, max(ts_recv) as hi from trades").iloc[0]
        assert min(recorded) * NS - NS <= got["lo"] <= got["hi"] <= max(recorded) * NS + NS, run.speed


# -- failing fast and clearly ------------------------------------------------------------------------


def test_a_request_the_recording_cannot_answer_fails_the_replay_naming_it(kraken_recording: Path,
                                                                        tmp_path: Path) -> None:
    """No restart loop: cryptofeed asks /0/public/AssetPairs, the recording has no such endpoint."""
    unanswerable = rename_rest_path(kraken_recording, tmp_path / "KRAKEN-other.jsonl.zst", "AssetPair", "Ticker")
    out = replay_cli(tmp_path, unanswerable)
    assert out.returncode != 0
    assert "KRAKEN-other.jsonl.zst has no answer for the request GET /0/public/AssetPairs" in out.stderr
    assert "/0/public/Ticker" in out.stderr and "Traceback" not in out.stderr


GARBAGE = {
    "random.jsonl.zst": b"\x28\xb5\x2f\xfd garbage, not a zstd frame" * 10,
    "text.jsonl.zst": b'{"t": "header"}\n',  # not compressed at all
    "broken.jsonl": b'{"t":"header","exchange":"BINANCE","config":{}}\n{"t":"recv","conn":"a","ts":1,"data":"x"}\n'
                    b'{"t": "recv", "conn": \n',
    "latin1.jsonl": b'{"t":"header","exchange":"BINANCE","config":{}}\n\xff\xfe\n',
    "list.jsonl": b'[1, 2, 3]\n',
    "badb64.jsonl": b'{"t":"header","exchange":"BINANCE","config":{}}\n{"t":"recv","conn":"a","ts":1,"b64":"@@"}\n',
    "noheader.jsonl": b'{"t":"recv","conn":"a","ts":1,"data":"x"}\n',
}
GARBAGE_LINE = {"random.jsonl.zst": ":1:", "text.jsonl.zst": ":1:", "broken.jsonl": ":3:", "latin1.jsonl": ":2:",
                "list.jsonl": ":1:", "badb64.jsonl": ":2:", "noheader.jsonl": ": no header record"}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_a_garbage_session_file_is_an_error_naming_the_file_and_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(GARBAGE[name])
    out = replay_cli(tmp_path, path)
    assert out.returncode == 2, out.stderr[-2000:]
    message, want = ("".join(text.split()) for text in (out.stderr, f"error: {path}{GARBAGE_LINE[name]}"))
    assert want in message and "Traceback" not in message  # whitespace aside: the console wraps long lines


# -- a session recorded from the simulator replays into the same lake ------------------------------------

RECORD_SECONDS = 8
COMPARED_CHANNELS = ("trades", "l2_book", "ticker")


SLICE_NS = 5 * 1_000_000_000  # write_config's lake.slice_seconds


def lake_rows(lake: Path, channel: str) -> list[tuple[Any, ...]]:
    """Every row but its local receive time; ts_event too where it is local (the exchange sent no time).

    The live run stamped REST book snapshots when their response came; the replay stamps them with the frame
    that asked for them. l2_book slices open with a snapshot the aggregator derives from the lake (stamped at
    the slice start, no sequence): it is not exchange data, and is left out.
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
    assert trades == sum(len(v) for v in direct_parse(capture, tmp_path / "direct").trades.values())



def test_replaying_a_runs_own_recording_into_its_lake_is_refused_and_adds_no_row(
        recorded_and_replayed: dict[str, Any], tmp_path: Path) -> None:
    """The lake of the run that recorded the sessions already holds their records: a replay into it would land
    each twice, so it is refused (exit 2, naming the lake and what it holds) before anything starts."""
    live: Path = recorded_and_replayed["live"]
    before = {ch: run_query(live, f"select count(*) from {ch}").iloc[0, 0] for ch in COMPARED_CHANNELS}
    argv = replay_argv(tmp_path, recorded_and_replayed["files"], "max")
    argv[argv.index("--lake") + 1] = str(live)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=REPLAY_TIMEOUT_SECONDS)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"lake {live} already holds" in " ".join(out.stderr.split()) and "another --lake" in out.stderr
    assert {ch: run_query(live, f"select count(*) from {ch}").iloc[0, 0] for ch in COMPARED_CHANNELS} == before
