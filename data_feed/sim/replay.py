"""Replay: serves recorded exchange sessions through the simulator, for any exchange cryptofeed supports.

Collectors of a replayed exchange talk to ``/replay/{EXCHANGE}/<the exchange's own path>`` (their
endpoints' hosts are swapped, paths kept). A websocket connection gets the frames of the recorded
connection its address asks for (`match_connection`), in order, paced by the recorded receive times
divided by ``speed`` (or back to back when speed is None). A REST request gets the recorded response
to the same kind of request (`http_candidates`); repeated requests walk through repeated responses.

Sample: a collector connecting to ``wss://localhost:PORT/replay/BINANCE/stream?streams=btcusdt@aggTrade``
is served the frames of the recording's ``wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.sim.session import HttpRecord, Session, WsRecord, http_candidates, match_connection

LOG = logging.getLogger(__name__)

PREFIX: Final = "/replay"
IDLE_DONE_SECONDS: Final = 3.0  # recorded connections nobody asked for this long after the rest are served
# Frames start once every recorded connection has a client that finished subscribing (no client frame for
# SUBSCRIBE_SETTLE_SECONDS): cryptofeed resets shared state when a connection subscribes, and on the real
# exchange nothing arrived before that. START_GATE_TIMEOUT_SECONDS bounds the wait for connections never opened.
SUBSCRIBE_SETTLE_SECONDS: Final = 0.3
START_GATE_TIMEOUT_SECONDS: Final = 3.0
GATE_POLL_SECONDS: Final = 0.02


def replay_prefix(exchange: str) -> str:
    return f"{PREFIX}/{exchange}"


@dataclass
class ServedConnection:
    """Progress through one recorded connection (a reconnecting client resumes where it stopped)."""

    record: WsRecord
    cursor: int = 0
    clients: int = 0
    client_frames: int = 0
    last_client_frame: float = 0.0

    def subscribed(self, now: float) -> bool:
        if self.clients == 0:
            return False
        if not self.record.sends or self.client_frames >= len(self.record.sends):
            return True
        return self.client_frames > 0 and now - self.last_client_frame > SUBSCRIBE_SETTLE_SECONDS

    @property
    def done(self) -> bool:
        return self.cursor >= len(self.record.frames)


@dataclass
class ExchangeReplay:
    """One session being served."""

    session: Session
    speed: float | None
    connections: list[ServedConnection] = field(default_factory=list)
    http_cursor: dict[tuple[str, str], int] = field(default_factory=dict)
    frames_sent: int = 0
    origin: float | None = None  # wall time at which the session's first frame is due
    last_activity: float = field(default_factory=time.monotonic)
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    started: bool = False
    first_claim: float | None = None

    def __post_init__(self) -> None:
        self.connections = [ServedConnection(c) for c in self.session.connections]

    def claim(self, path: str, query: str) -> ServedConnection | None:
        unclaimed = [c.record for c in self.connections if c.clients == 0 and not c.done]
        record = match_connection(unclaimed, path, query) or match_connection(
            [c.record for c in self.connections], path, query)
        return next((c for c in self.connections if c.record is record), None)

    async def wait_start(self) -> None:
        """Hold the session's first frame until every recorded connection is open and subscribed."""
        while not self.started:
            now = time.monotonic()
            if self.first_claim is None:
                self.first_claim = now
            ready = all(c.subscribed(now) for c in self.connections)
            if ready or now - self.first_claim > START_GATE_TIMEOUT_SECONDS:
                self.started = True
                break
            await asyncio.sleep(GATE_POLL_SECONDS)

    def respond(self, path: str, query: dict[str, str]) -> HttpRecord | None:
        found = http_candidates(self.session, path, query)
        if not found:
            return None
        key = (found[0].path, repr(sorted(query.items())))
        index = self.http_cursor.get(key, 0)
        self.http_cursor[key] = index + 1
        return found[min(index, len(found) - 1)]

    def due_at(self, recorded_ts: float) -> float:
        if self.origin is None:
            self.origin = time.time() - (recorded_ts - self.session.first_ts) / (self.speed or 1.0)
        return self.origin + (recorded_ts - self.session.first_ts) / (self.speed or 1.0)

    def stats(self) -> dict[str, Any]:
        served = [c for c in self.connections if c.clients]
        drained = all(c.done for c in served)
        idle = time.monotonic() - self.last_activity > IDLE_DONE_SECONDS
        return {
            "frames_sent": self.frames_sent,
            "frames_total": self.session.frames_total,
            "connections": {c.record.conn: {"clients": c.clients, "sent": c.cursor, "total": len(c.record.frames)}
                            for c in self.connections},
            "done": bool(served) and drained and (len(served) == len(self.connections) or idle),
        }


class ReplayServer:
    """Routes of every replayed exchange; mounted by the simulator's server."""

    def __init__(self, sessions: dict[str, Session], speed: float | None) -> None:
        self.exchanges = {name: ExchangeReplay(s, speed) for name, s in sessions.items()}
        self.paused = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PREFIX + "/{exchange}{tail:(/.*)?}", self._handle)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["exchange"]
        replay = self.exchanges.get(name)
        if replay is None:
            return web.json_response({"error": f"no recorded session for exchange {name}"}, status=404)
        replay.last_activity = time.monotonic()
        tail = request.match_info["tail"] or "/"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, name, replay, tail)
        return self._rest(request, name, replay, tail)

    def _rest(self, request: web.Request, name: str, replay: ExchangeReplay, tail: str) -> web.Response:
        record = replay.respond(tail, dict(request.query))
        if record is None:
            LOG.error("exchange=%s: no recorded response for %s?%s", name, tail, request.query_string)
            return web.json_response({"error": f"not recorded: {tail}?{request.query_string}"}, status=404)
        return web.Response(text=record.data, content_type="application/json")

    async def _websocket(self, request: web.Request, name: str, replay: ExchangeReplay,
                         tail: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        served = replay.claim(tail, request.query_string)
        if served is None:
            LOG.error("exchange=%s: no recorded connection for %s?%s; closing", name, tail, request.query_string)
            await ws.close(message=b"not recorded")
            return ws
        served.clients += 1
        replay.sockets.add(ws)
        LOG.info("exchange=%s: serving recorded connection %s (%d frames, from %d)", name, served.record.conn,
                 len(served.record.frames), served.cursor)
        sender = asyncio.get_running_loop().create_task(self._send_frames(ws, replay, served))
        try:
            async for _ in ws:  # subscriptions are counted, not answered: the recording already answers them
                served.client_frames += 1
                served.last_client_frame = replay.last_activity = time.monotonic()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            replay.sockets.discard(ws)
        return ws

    async def _send_frames(self, ws: web.WebSocketResponse, replay: ExchangeReplay, served: ServedConnection) -> None:
        frames = served.record.frames
        await replay.wait_start()
        while served.cursor < len(frames) and not ws.closed:
            while self.paused:
                await asyncio.sleep(0.05)
            ts, data = frames[served.cursor]
            if replay.speed is not None:
                delay = replay.due_at(ts) - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            served.cursor += 1
            replay.frames_sent += 1
            replay.last_activity = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {name: replay.stats() for name, replay in self.exchanges.items()}

    async def close(self) -> None:
        for replay in self.exchanges.values():
            for ws in list(replay.sockets):
                await ws.close()
