"""The exchange simulator: one TLS aiohttp server hosting every simulated exchange plus a control API.

Exchanges are mounted by protocol module (Binance under /binance, Binance USD-M futures under
/binance_futures, Bybit under /bybit, Coinbase under /coinbase, Kraken under /kraken, OKX under /okx),
recorded sessions under /replay/{EXCHANGE} (`replay.py`). A clock
task advances every started market each tick and lets the protocol modules emit frames in batches.
Control API (JSON): GET /_sim/health, GET /_sim/stats, POST /_sim/pause, POST /_sim/resume,
GET /_sim/book/{EXCHANGE}/{SYMBOL}?depth=20.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.capture import Session, load_session
from data_feed.contracts.config import Config
from data_feed.contracts.rundir import SIM_READY_NAME
from data_feed.observability.status import RoleStatus
from data_feed.sim.binance import BinanceProtocol
from data_feed.sim.binance_futures import BinanceFuturesProtocol
from data_feed.sim.bybit import BybitProtocol
from data_feed.sim.coinbase import CoinbaseProtocol
from data_feed.sim.hub import ExchangeProtocol, SymbolState, now
from data_feed.sim.kraken import KrakenProtocol
from data_feed.sim.ledger import LEDGER_FILE_NAME, IdLedger
from data_feed.sim.okx import OkxProtocol
from data_feed.sim.replay import ReplayServer
from data_feed.sim.tls import server_context, write_self_signed

LOG = logging.getLogger(__name__)

TICK_SECONDS: Final = 0.01
DRAIN_TIMEOUT_SECONDS: Final = 10.0
PROTOCOLS: Final[dict[str, type[ExchangeProtocol]]] = {p.name: p for p in (
    BinanceProtocol, BinanceFuturesProtocol, BybitProtocol, CoinbaseProtocol, KrakenProtocol, OkxProtocol)}


class Simulator:
    """Serves every exchange of `config.simulated()` over TLS on config.simulator.host/port."""

    def __init__(self, config: Config, cert_dir: Path, port: int | None = None, ledger: Path | None = None) -> None:
        """``ledger``: the id ledger file (``sim.ledger``); None numbers every market from 1 (tests)."""
        self.config = config
        self.listen_port = config.simulator.port if port is None else port  # a restart keeps its port
        self.cert_dir = Path(cert_dir)
        seed = config.simulator.seed
        self.protocols: dict[str, ExchangeProtocol] = {
            name: PROTOCOLS[name](ex, seed) for name, ex in config.simulated().items()
        }
        self.ledger = IdLedger(ledger)
        for name, proto in self.protocols.items():
            for state in proto.symbols.values():
                self._continue_ids(name, state)
        self.replay = ReplayServer(replay_sessions(config), config.replay.speed)
        self.paused = False
        self._cert_path: Path | None = None
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._clock: asyncio.Task[None] | None = None

    def _continue_ids(self, exchange: str, state: SymbolState) -> None:
        trade_id, update_id = self.ledger.start(exchange, state.symbol)
        symbol = state.symbol
        state.market.continue_after(trade_id, update_id,
                                    lambda t, u: self.ledger.reserve(exchange, symbol, t, u))
        state.published.update_id = state.market.update_id
        state.last_trade_id = trade_id

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        cert_path, key_path = write_self_signed(self.cert_dir, self.config.simulator.public_host)
        self._cert_path = cert_path
        self._runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        cfg = self.config.simulator
        site = web.TCPSite(self._runner, cfg.host, self.listen_port, ssl_context=server_context(cert_path, key_path),
                           reuse_address=True)
        await site.start()
        self._port = self._bound_port()
        self._clock = asyncio.get_running_loop().create_task(self._run_clock())
        LOG.info("simulator listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None
        for proto in self.protocols.values():
            for outbox in list(proto.outboxes):
                await outbox.ws.close()
        await self.replay.close()
        for name, proto in self.protocols.items():  # the next run continues exactly here
            for state in proto.symbols.values():
                self.ledger.record_exact(name, state.symbol, state.market.last_trade_id, state.market.update_id)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _bound_port(self) -> int:
        assert self._runner is not None
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        raise RuntimeError("simulator is not bound to a TCP port")

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def cert_path(self) -> Path:
        if self._cert_path is None:
            raise RuntimeError("simulator not started")
        return self._cert_path

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"wss://localhost:{self.port}"

    # -- clock ------------------------------------------------------------------------------

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick(now())
            except Exception:  # a bug must not silently stop the market
                LOG.exception("simulator tick failed")

    def tick(self, now_ts: float) -> None:
        """Advance every started market to now_ts and emit what fell due."""
        for proto in self.protocols.values():
            if not self.paused:
                for state in proto.symbols.values():
                    events = state.advance(now_ts)
                    if events:
                        proto.publish(state, events)
                        state.account_unqueued(events)
            proto.on_tick(now_ts)

    async def pause(self) -> None:
        """Stop generating, flush pending diffs and wait until every queued frame is written."""
        self.paused = True
        self.replay.paused = True
        for proto in self.protocols.values():
            proto.flush()
        await asyncio.wait_for(
            asyncio.gather(*(p.drained() for p in self.protocols.values())), DRAIN_TIMEOUT_SECONDS
        )

    def resume(self) -> None:
        t = now()
        for proto in self.protocols.values():
            for state in proto.symbols.values():
                if state.started:
                    state.resume_at = max(state.resume_at, t)
        self.paused = False
        self.replay.paused = False

    def stats(self) -> dict[str, Any]:
        return {**{name: proto.stats() for name, proto in self.protocols.items()}, **self.replay.stats()}

    # -- HTTP -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        for proto in self.protocols.values():
            app.add_routes(proto.routes())
        app.add_routes(self.replay.routes())
        app.add_routes([
            web.get("/_sim/health", self._health),
            web.get("/_sim/stats", self._stats),
            web.post("/_sim/pause", self._pause),
            web.post("/_sim/resume", self._resume),
            web.get("/_sim/book/{exchange}/{symbol}", self._book),
        ])
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _pause(self, request: web.Request) -> web.Response:
        await self.pause()
        return web.json_response({"paused": True})

    async def _resume(self, request: web.Request) -> web.Response:
        self.resume()
        return web.json_response({"paused": False})

    async def _book(self, request: web.Request) -> web.Response:
        """{"bids": [[64999.99, 0.431], ...], "asks": [[65000.01, 1.2], ...]}, best first, as sent."""
        proto = self.protocols.get(request.match_info["exchange"].upper())
        state = proto.symbols.get(request.match_info["symbol"].upper()) if proto else None
        if state is None:
            return web.json_response({"error": "unknown exchange or symbol"}, status=404)
        try:
            depth = int(request.query.get("depth", "20"))
        except ValueError:
            return web.json_response({"error": "depth must be an integer"}, status=400)
        return web.json_response(state.published.top(max(depth, 0)))


def ledger_path(config: Config) -> Path:
    """Where the simulator's id ledger lives: with a local lake, in it (ids never repeat within one lake)."""
    if config.lake.s3 is None:
        return Path(config.lake.root) / LEDGER_FILE_NAME
    return Path(config.spawner.run_dir) / "sim" / "ids.json"


def replay_sessions(config: Config) -> dict[str, Session]:
    """The recorded session of every exchange whose source is replay, by exchange (from each file's header)."""
    wanted = {name for name, ex in config.exchanges.items() if ex.source == "replay"}
    sessions: dict[str, Session] = {}
    for path in config.replay.files:
        session = load_session(path)
        if session.exchange in wanted:
            sessions[session.exchange] = session
    missing = wanted - set(sessions)
    if missing:
        raise ValueError(f"exchanges {sorted(missing)} have source: replay but no file in replay.files records them")
    return sessions


async def serve_forever(config: Config, cert_dir: Path, status: RoleStatus | None = None) -> None:
    """Run a Simulator until SIGINT/SIGTERM; once listening write {"port", "cert"} JSON to
    ``cert_dir/ready.json`` (the spawner reads the port it got from there) and say ready."""
    ready_file = cert_dir / SIM_READY_NAME
    sim = Simulator(config, cert_dir, None, ledger_path(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        _write_ready(ready_file, {"port": sim.port, "cert": str(sim.cert_path), "base_url": sim.base_url})
        if status is not None:
            status.ready()
        await stop.wait()
    finally:
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _write_ready(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
