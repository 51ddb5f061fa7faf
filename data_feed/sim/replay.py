"""Replay: serves recorded exchange sessions through the simulator, for any exchange cryptofeed supports.

Collectors of a replayed exchange talk to ``/replay/{EXCHANGE}/<the exchange's own path>`` (their
endpoints' hosts are swapped, paths kept). A REST request gets the recorded response to the same kind
of request (`http_candidates`); repeated requests walk through repeated responses; a request the
recording cannot answer is a 404 naming it, and is listed in the stats (``unanswered``) so that
``data-feed replay`` fails fast instead of waiting.

Which recorded connection a websocket client gets (`ExchangeReplay.claim`): the one its address asks
for; when several share that address (cryptofeed splits a long subscription list over connections to
one URL), the one whose recorded subscription frames are closest to what the client sends. A recorded
connection serves one client at a time; a client that reconnects resumes where its connection stopped.

Frames (text as text, binary as binary) leave in the order they were recorded in, across connections
(`ExchangeReplay.serve`), paced by the recorded receive times divided by ``speed``, or back to back
when speed is None. They start once every recorded connection has a client that finished subscribing
(cryptofeed resets shared state when a connection subscribes; on the real exchange nothing arrived
before that). Recorded order across connections matters because cryptofeed classes share state
between connections (Bybit keeps one ticker per exchange symbol for spot and linear, whose symbols are
the same), so it must also be the order the client *handles* frames in: a client that asks for it
(header `ENVELOPE_HEADER`, as data-feed's replay collectors do) gets each frame in an envelope carrying
the frame's recorded receive time and, where the next frame is for another connection, a request to
acknowledge it once handled; the next frame waits for that acknowledgement.

Sample: a collector connecting to ``wss://localhost:PORT/replay/BINANCE/stream?streams=btcusdt@aggTrade``
is served the frames of the recording's ``wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade``,
each as ``\\x1e1633998512.06 17 0\\x1e{"stream": ...}`` (recorded time, place in the session, no ack wanted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.capture import (
    ENVELOPE_HEADER,
    REPLAY_PATH_PREFIX,
    HttpRecord,
    Session,
    WsRecord,
    parse_ack,
    wrap_frame,
)
from data_feed.sim.session import (
    best_by_address,
    closest_by_sends,
    http_candidates,
    recorded_requests,
)

LOG = logging.getLogger(__name__)

# A connection has finished subscribing once its client sent as many frames as the recording holds, or
# nothing more for SUBSCRIBE_SETTLE_SECONDS. START_GATE_TIMEOUT_SECONDS bounds the wait for recorded
# connections the client never opens (their frames are then not served, and the stats say so).
SUBSCRIBE_SETTLE_SECONDS: Final = 0.3
START_GATE_TIMEOUT_SECONDS: Final = 10.0
# A client whose address several recorded connections share is matched on its subscription frames, after
# they settle or at most this long after connecting; a client finding every matching connection busy
# waits this long for one to be released (its own, closing just as it reconnects).
CLAIM_WAIT_SECONDS: Final = 2.0
RECONNECT_WAIT_SECONDS: Final = 30.0  # a connection whose client left this long has its other frames skipped
ACK_TIMEOUT_SECONDS: Final = 30.0  # then the next frame goes without the acknowledgement (logged)
GATE_POLL_SECONDS: Final = 0.02
PAUSE_POLL_SECONDS: Final = 0.05
UNANSWERED_LISTED: Final = 20
RECORDED_LISTED: Final = 8

# -- one session --------------------------------------------------------------------------------------


@dataclass
class Client:
    """One client socket, what it has sent, and the last frame it acknowledged as handled."""

    ws: web.WebSocketResponse
    envelope: bool = False
    sends: list[str | bytes] = field(default_factory=list)
    last_frame: float = field(default_factory=time.monotonic)
    acked: int = -1
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self, now: float) -> bool:
        return now - self.last_frame > SUBSCRIBE_SETTLE_SECONDS

    async def wait_ack(self, index: int) -> bool:
        deadline = time.monotonic() + ACK_TIMEOUT_SECONDS
        while self.acked < index and not self.ws.closed:
            self.ack_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ack_event.wait(), max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return False
        return True


@dataclass
class ServedConnection:
    """Progress through one recorded connection (a reconnecting client resumes where it stopped)."""

    record: WsRecord
    cursor: int = 0
    claims: int = 0
    client: Client | None = None  # the one client being served, if any
    left_at: float | None = None  # when its last client went
    abandoned: bool = False  # its client left and did not come back: its other frames are skipped

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
    order: list[tuple[float, int, int]] = field(default_factory=list)  # (recorded ts, connection, frame)
    http_cursor: dict[tuple[str, str], int] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    frames_sent: int = 0
    origin: float | None = None  # wall time at which the session's first frame is due
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    started: bool = False
    finished: bool = False
    first_claim: float | None = None
    claiming: int = 0  # clients still being matched to a recorded connection
    sender: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.connections = [ServedConnection(c) for c in self.session.connections]
        self.order = self.session.frame_order()
        self.finished = not self.order  # a session of REST answers only is served once it exists

    # -- clients -----------------------------------------------------------------------------

    async def claim(self, client: Client, path: str, query: str) -> ServedConnection | None:
        """The recorded connection this client is served, or None when the recording has none for it."""
        self.claiming += 1
        self.first_claim = self.first_claim or time.monotonic()
        try:
            matching = best_by_address([c.record for c in self.connections], path, query)
            chosen = await self._choose(client, matching) if matching else None
        finally:
            self.claiming -= 1
        if chosen is not None:
            chosen.client, chosen.left_at, chosen.abandoned = client, None, False
            chosen.claims += 1
        return chosen

    async def _choose(self, client: Client, matching: list[WsRecord]) -> ServedConnection | None:
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            free = [c for c in self.connections if c.record in matching and c.client is None]
            unfinished = [c for c in free if not c.done] or free
            now = time.monotonic()
            if unfinished and (len(matching) == 1 or not any(c.record.sends for c in unfinished)):
                return unfinished[0]  # one candidate, or candidates told apart by their address alone
            if unfinished and (now > deadline or (client.sends and client.settled(now))):
                record = closest_by_sends([c.record for c in unfinished], client.sends)
                return next(c for c in unfinished if c.record is record)
            if now > deadline or client.ws.closed:
                return None
            await asyncio.sleep(GATE_POLL_SECONDS)

    def release(self, served: ServedConnection, client: Client) -> None:
        if served.client is client:
            served.client, served.left_at = None, time.monotonic()

    # -- frames ------------------------------------------------------------------------------

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
                          "within %.0fs; its frames are not served", self.session.exchange, c.record.conn,
                          c.record.addr, len(c.record.frames), START_GATE_TIMEOUT_SECONDS)

    async def serve(self, paused: Any) -> None:
        """Every frame in recorded order, each to its connection's client; ``paused()`` holds them."""
        await self.wait_start()
        index = 0
        while index < len(self.order):
            ts, ci, j = self.order[index]
            served = self.connections[ci]
            client = await self._client_of(served)
            if client is None or served.cursor > j:  # not opened, gone for good, or already sent
                index += 1
                continue
            await self._pace(ts, paused)
            if not await self._send(client, served, index):
                continue  # the client went while it was sent: the same frame again, to its next client
            index += 1
        self.finished = True
        LOG.info("exchange=%s: recording served (%d of %d frames)", self.session.exchange, self.frames_sent,
                 self.session.frames_total)

    async def _client_of(self, served: ServedConnection) -> Client | None:
        while served.client is None or served.client.ws.closed:
            if served.abandoned or not served.claims:
                return None
            if served.left_at is not None and time.monotonic() - served.left_at > RECONNECT_WAIT_SECONDS:
                LOG.error("exchange=%s: the client of recorded connection %s left and did not come back within "
                          "%.0fs; its other %d frames are not served", self.session.exchange, served.record.conn,
                          RECONNECT_WAIT_SECONDS, len(served.record.frames) - served.cursor)
                served.abandoned = True
                return None
            await asyncio.sleep(GATE_POLL_SECONDS)
        return served.client

    async def _pace(self, ts: float, paused: Any) -> None:
        if self.speed is not None:
            delay = self.due_at(ts) - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        while paused():
            await asyncio.sleep(PAUSE_POLL_SECONDS)

    async def _send(self, client: Client, served: ServedConnection, index: int) -> bool:
        ts, data = served.record.frames[served.cursor]
        ack = client.envelope and index + 1 < len(self.order) and self.order[index + 1][1] != self.order[index][1]
        frame = wrap_frame(data, ts, index, ack) if client.envelope else data
        try:
            await (client.ws.send_bytes(frame) if isinstance(frame, bytes) else client.ws.send_str(frame))
        except (ConnectionError, RuntimeError):  # closing under us (aiohttp raises both)
            return False
        served.cursor += 1
        self.frames_sent += 1
        if ack and not await client.wait_ack(index) and not client.ws.closed:
            LOG.warning("exchange=%s: no acknowledgement of frame %d of %s within %.0fs; going on without it",
                        self.session.exchange, index, served.record.conn, ACK_TIMEOUT_SECONDS)
        return True

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
        return {
            "frames_sent": self.frames_sent,
            "frames_total": self.session.frames_total,
            "connections": {c.record.conn: {"clients": c.claims, "sent": c.cursor, "total": len(c.record.frames)}
                            for c in self.connections},
            "never_opened": [c.record.conn for c in self.connections if not c.claims],
            "file": self.session.path.name,
            "unanswered": list(self.unanswered),
            "recorded_requests": recorded_requests(self.session)[:RECORDED_LISTED] if self.unanswered else [],
            "done": self.finished,
        }


class ReplayServer:
    """Routes of every replayed exchange; mounted by the simulator's server."""

    def __init__(self, sessions: dict[str, Session], speed: float | None) -> None:
        self.exchanges = {name: ExchangeReplay(s, speed) for name, s in sessions.items()}
        self.paused = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get(REPLAY_PATH_PREFIX + "/{exchange}{tail:(/.*)?}", self._handle)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["exchange"]
        replay = self.exchanges.get(name)
        if replay is None:
            return web.json_response({"error": f"no recorded session for exchange {name}"}, status=404)
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
        client = Client(ws, envelope=ENVELOPE_HEADER in request.headers)
        replay.sockets.add(ws)
        reader = asyncio.get_running_loop().create_task(self._read_client(client))
        served = await replay.claim(client, tail, request.query_string)
        if served is None and not best_by_address([c.record for c in replay.connections], tail, request.query_string):
            LOG.error("exchange=%s: the recording has no connection to %s?%s; closing", name, tail,
                      request.query_string)
            await ws.close(message=b"not recorded")
        elif served is None:  # kept open and idle: closing it would only make the client reconnect, again and again
            LOG.warning("exchange=%s: a client connection to %s?%s is served nothing: each of the recording's "
                        "connections there has a client (cryptofeed opens more than the recording client did)",
                        name, tail, request.query_string)
        else:
            LOG.info("exchange=%s: serving recorded connection %s (%d frames, from %d)", name, served.record.conn,
                     len(served.record.frames), served.cursor)
            if replay.sender is None:
                replay.sender = asyncio.get_running_loop().create_task(replay.serve(lambda: self.paused))
        try:
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if served is not None:
                replay.release(served, client)
            replay.sockets.discard(ws)
        return ws

    @staticmethod
    async def _read_client(client: Client) -> None:
        """Client frames are kept for matching (subscriptions), not answered: the recording answers them."""
        async for msg in client.ws:
            data = msg.data if isinstance(msg.data, str | bytes) else str(msg.data)
            acked = parse_ack(data) if client.envelope else None
            if acked is not None:
                client.acked = max(client.acked, acked)
                client.ack_event.set()
                continue
            client.sends.append(data)
            client.last_frame = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {name: replay.stats() for name, replay in self.exchanges.items()}

    async def close(self) -> None:
        for replay in self.exchanges.values():
            if replay.sender is not None:
                replay.sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replay.sender
            for ws in list(replay.sockets):
                await ws.close()
