"""Replay: serves recorded exchange sessions through the simulator, for any exchange cryptofeed supports.

Collectors of a replayed exchange talk to ``/replay/{EXCHANGE}/<the exchange's own path>`` (their
endpoints' hosts are swapped, paths kept). A websocket connection gets the frames of the recorded
connection it asks for, in order, text frames as text and binary frames (gzip, deflate) as binary,
paced by the recorded receive times divided by ``speed`` (or back to back when speed is None). A REST
request gets the recorded response to the same kind of request (`http_candidates`); repeated requests
walk through repeated responses; a request the recording cannot answer is a 404 naming it, and is
listed in the stats (`unanswered`) so that ``data-feed replay`` fails fast instead of waiting.

Which recorded connection a client gets (`ExchangeReplay.claim`): the one its address asks for; when
several recorded connections share that address (cryptofeed splits a long subscription list over
connections to one URL), the one whose recorded subscription frames are closest to what the client
sends. A recorded connection serves one client at a time; a client that reconnects resumes where its
connection stopped.

Frames start once every recorded connection has a client that finished subscribing: cryptofeed resets
shared state when a connection subscribes, and on the real exchange nothing arrived before that.

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

from data_feed.sim.session import (
    HttpRecord,
    Session,
    WsRecord,
    best_by_address,
    closest_by_sends,
    http_candidates,
    recorded_requests,
)

LOG = logging.getLogger(__name__)

PREFIX: Final = "/replay"
IDLE_DONE_SECONDS: Final = 3.0  # recorded connections nobody asked for this long after the rest are served
# A connection has finished subscribing once its client sent as many frames as the recording holds, or
# nothing more for SUBSCRIBE_SETTLE_SECONDS. START_GATE_TIMEOUT_SECONDS bounds the wait for recorded
# connections the client never opens (their frames are then not served, and the stats say so).
SUBSCRIBE_SETTLE_SECONDS: Final = 0.3
START_GATE_TIMEOUT_SECONDS: Final = 5.0
# A client whose address several recorded connections share is matched on its subscription frames, after
# they settle or at most this long after connecting; a client finding every matching connection busy
# waits this long for one to be released (its own, closing just as it reconnects).
CLAIM_WAIT_SECONDS: Final = 2.0
GATE_POLL_SECONDS: Final = 0.02
UNANSWERED_LISTED: Final = 20
RECORDED_LISTED: Final = 8


def replay_prefix(exchange: str) -> str:
    return f"{PREFIX}/{exchange}"


@dataclass
class Client:
    """One client socket and what it has sent."""

    ws: web.WebSocketResponse
    sends: list[str | bytes] = field(default_factory=list)
    last_frame: float = field(default_factory=time.monotonic)

    def settled(self, now: float) -> bool:
        return now - self.last_frame > SUBSCRIBE_SETTLE_SECONDS


@dataclass
class ServedConnection:
    """Progress through one recorded connection (a reconnecting client resumes where it stopped)."""

    record: WsRecord
    cursor: int = 0
    claims: int = 0
    client: Client | None = None  # the one client being served, if any

    def subscribed(self, now: float) -> bool:
        if self.client is None:
            return False
        sent = len(self.client.sends)
        if not self.record.sends or sent >= len(self.record.sends):
            return True
        return sent > 0 and self.client.settled(now)

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
    unanswered: list[str] = field(default_factory=list)
    frames_sent: int = 0
    origin: float | None = None  # wall time at which the session's first frame is due
    last_activity: float = field(default_factory=time.monotonic)
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    started: bool = False
    first_claim: float | None = None
    claiming: int = 0  # clients still being matched to a recorded connection

    def __post_init__(self) -> None:
        self.connections = [ServedConnection(c) for c in self.session.connections]

    # -- websocket ---------------------------------------------------------------------------

    async def claim(self, client: Client, path: str, query: str) -> ServedConnection | None:
        """The recorded connection this client is served, or None when the recording has none for it."""
        self.claiming += 1
        self.first_claim = self.first_claim or time.monotonic()
        try:
            matching = best_by_address([c.record for c in self.connections], path, query)
            if not matching:
                return None
            chosen = await self._choose(client, matching)
        finally:
            self.claiming -= 1
        if chosen is not None:
            chosen.client = client
            chosen.claims += 1
        return chosen

    async def _choose(self, client: Client, matching: list[WsRecord]) -> ServedConnection | None:
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            free = [c for c in self.connections if c.record in matching and c.client is None]
            unfinished = [c for c in free if not c.done] or free
            now = time.monotonic()
            if len(unfinished) == 1 and len(matching) == 1:
                return unfinished[0]
            if unfinished and not any(c.record.sends for c in unfinished):  # subscribed by address alone
                return unfinished[0]
            if unfinished and (now > deadline or (client.sends and client.settled(now))):
                record = closest_by_sends([c.record for c in unfinished], client.sends)
                return next(c for c in unfinished if c.record is record)
            if now > deadline or client.ws.closed:
                return None
            await asyncio.sleep(GATE_POLL_SECONDS)

    def release(self, served: ServedConnection, client: Client) -> None:
        if served.client is client:
            served.client = None

    async def wait_start(self) -> None:
        """Hold the session's first frame until every recorded connection is open and subscribed."""
        while not self.started:
            now = time.monotonic()
            ready = all(c.subscribed(now) for c in self.connections)
            timed_out = self.first_claim is not None and now - self.first_claim > START_GATE_TIMEOUT_SECONDS
            if ready or (timed_out and not self.claiming):
                self.started = True
                self._report_unopened()
                break
            await asyncio.sleep(GATE_POLL_SECONDS)

    def _report_unopened(self) -> None:
        for c in self.connections:
            if c.client is None:
                LOG.error("exchange=%s: recorded connection %s (%s, %d frames) was not opened by the client "
                          "within %.0fs; its frames are served only if it connects later", self.session.exchange,
                          c.record.conn, c.record.addr, len(c.record.frames), START_GATE_TIMEOUT_SECONDS)

    def due_at(self, recorded_ts: float) -> float:
        if self.origin is None:
            self.origin = time.time() - (recorded_ts - self.session.first_ts) / (self.speed or 1.0)
        return self.origin + (recorded_ts - self.session.first_ts) / (self.speed or 1.0)

    # -- REST --------------------------------------------------------------------------------

    def respond(self, path: str, query: dict[str, str]) -> HttpRecord | None:
        found = http_candidates(self.session, path, query)
        if not found:
            return None
        key = (found[0].path, repr(sorted(query.items())))
        index = self.http_cursor.get(key, 0)
        self.http_cursor[key] = index + 1
        return found[min(index, len(found) - 1)]

    def not_recorded(self, request: str) -> str:
        """Remember a request the recording cannot answer; the message naming it and what was recorded."""
        if len(self.unanswered) < UNANSWERED_LISTED and request not in self.unanswered:
            self.unanswered.append(request)
        recorded = recorded_requests(self.session)
        listed = ", ".join(recorded[:RECORDED_LISTED]) + (", ..." if len(recorded) > RECORDED_LISTED else "")
        return (f"exchange={self.session.exchange}: the recording {self.session.path.name} has no answer for "
                f"GET {request} (it recorded: {listed or 'no REST request'})")

    # -- progress ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        served = [c for c in self.connections if c.claims]
        drained = all(c.done for c in served)
        idle = time.monotonic() - self.last_activity > IDLE_DONE_SECONDS
        return {
            "frames_sent": self.frames_sent,
            "frames_total": self.session.frames_total,
            "connections": {c.record.conn: {"clients": c.claims, "sent": c.cursor, "total": len(c.record.frames)}
                            for c in self.connections},
            "never_opened": [c.record.conn for c in self.connections if not c.claims],
            "file": self.session.path.name,
            "unanswered": list(self.unanswered),
            "recorded_requests": recorded_requests(self.session)[:RECORDED_LISTED] if self.unanswered else [],
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
        return self._rest(request, replay, tail)

    def _rest(self, request: web.Request, replay: ExchangeReplay, tail: str) -> web.Response:
        record = replay.respond(tail, dict(request.query))
        if record is None:
            message = replay.not_recorded(tail + (f"?{request.query_string}" if request.query_string else ""))
            LOG.error("%s", message)
            return web.json_response({"error": message}, status=404)
        return web.Response(text=record.data, content_type="application/json")

    async def _websocket(self, request: web.Request, name: str, replay: ExchangeReplay,
                         tail: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        client = Client(ws)
        replay.sockets.add(ws)
        reader = asyncio.get_running_loop().create_task(self._read_client(client, replay))
        served = await replay.claim(client, tail, request.query_string)
        if served is None:
            LOG.error("exchange=%s: no free recorded connection for %s?%s (the recording has %d); closing", name,
                      tail, request.query_string, len(replay.connections))
            await ws.close(message=b"not recorded")
        else:
            LOG.info("exchange=%s: serving recorded connection %s (%d frames, from %d)", name, served.record.conn,
                     len(served.record.frames), served.cursor)
        sender = asyncio.get_running_loop().create_task(self._send_frames(ws, replay, served)) if served else None
        try:
            await reader
        finally:
            for task in (sender, reader):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if served is not None:
                replay.release(served, client)
            replay.sockets.discard(ws)
        return ws

    @staticmethod
    async def _read_client(client: Client, replay: ExchangeReplay) -> None:
        """Client frames (subscriptions, pongs) are kept for matching, not answered: the recording answers."""
        async for msg in client.ws:
            client.sends.append(msg.data if isinstance(msg.data, str | bytes) else str(msg.data))
            client.last_frame = replay.last_activity = time.monotonic()

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
