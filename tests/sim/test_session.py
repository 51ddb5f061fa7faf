"""Recorded sessions: the capture format read and written exactly (binary frames too), REST requests matched to
recorded answers across cryptofeed versions, connections to one address told apart, frames in recorded order,
and the envelope replay collectors get frames in."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from data_feed.collector.recorder import SessionRecorder
from data_feed.contracts.capture import (
    HttpRecord,
    Session,
    SessionError,
    WsRecord,
    ack_frame,
    load_session,
    parse_ack,
    read_exchange,
    unwrap_frame,
    wrap_frame,
)
from data_feed.sim.session import best_by_address, closest_by_sends, http_candidates


def session(http: Sequence[str] = (), connections: Sequence[WsRecord] = ()) -> Session:
    records = [HttpRecord(float(i), url, f"answer {i}") for i, url in enumerate(http)]
    return Session(Path("X.jsonl"), "X", {}, None, records, list(connections))


RECORDED = ["https://api.x.com/api/v5/public/instrument?instType=SPOT",
            "https://api.x.com/api/v5/public/instrument?instType=SWAP",
            "https://api.x.com/api/v3/brokerage/market/products",
            "https://api.x.com/v1/depth?symbol=BTCUSDT&limit=1000",
            "https://api.x.com/v1/depth?symbol=BTCUSDT&limit=1000"]


@pytest.mark.parametrize(("asked", "query", "answer"), [
    ("/api/v5/public/instruments", {"instType": "SWAP"}, "answer 1"),  # a plural where the recording has the singular
    ("/api/v5/public/instrument", {"instType": "SPOT"}, "answer 0"),
    ("/api/v3/brokerage/products", {}, "answer 2"),  # a segment more or less (Coinbase's product list)
    ("/v3/depth", {"symbol": "BTCUSDT", "limit": "100"}, "answer 3"),  # another version, another size
    ("/replay/X/v1/depth/", {"symbol": "BTCUSDT"}, "answer 3"),  # a mount prefix, a trailing slash
])
def test_a_request_gets_the_recorded_answer_to_what_it_asks_for(asked: str, query: dict[str, str],
                                                                answer: str) -> None:
    found = http_candidates(session(RECORDED), asked, query)
    assert found and found[0].data == answer


@pytest.mark.parametrize(("asked", "query"), [
    ("/api/v5/public/instruments", {"instType": "OPTION"}),  # other parameters
    ("/v1/depth", {"symbol": "ETHUSDT"}),
    ("/api/v5/public/tickers", {}),  # another endpoint
    ("/api/v5/public/instruments", {}),
])
def test_a_request_the_recording_does_not_answer_finds_nothing(asked: str, query: dict[str, str]) -> None:
    assert http_candidates(session(RECORDED), asked, query) == []


def test_repeated_recorded_answers_are_all_candidates_in_recorded_order() -> None:
    found = http_candidates(session(RECORDED), "/v1/depth", {"symbol": "BTCUSDT", "limit": "1000"})
    assert [r.ts for r in found] == [3.0, 4.0]


def kraken_connection(conn: str, sends: list[str]) -> WsRecord:
    return WsRecord(conn, "wss://ws.kraken.com", 0.0, list(sends), [])


def test_connections_to_one_address_are_told_apart_by_what_the_client_subscribes() -> None:
    """cryptofeed splits 24 Kraken subscriptions over two connections to one URL."""
    first = kraken_connection("KRAKEN.ws.1", [
        '{"event":"subscribe","pair":["XBT/USD","ETH/USD","SOL/USD"],"subscription":{"name":"trade"}}',
        '{"event":"subscribe","pair":["XBT/USD","ETH/USD"],"subscription":{"name":"book","depth":100}}'])
    second = kraken_connection("KRAKEN.ws.2", [
        '{"event":"subscribe","pair":["SOL/USD"],"subscription":{"name":"book","depth":100}}'])
    tied = best_by_address([first, second], "/", "")
    assert tied == [first, second]
    assert closest_by_sends(tied, [second.sends[0]]) is second
    assert closest_by_sends(tied, first.sends[:1]) is first  # the first frame alone is enough


def test_frames_are_in_recorded_order_across_connections_and_in_order_within_one() -> None:
    a = WsRecord("X.ws.1", "wss://x/a", 0.0, [], [(1.0, "a0"), (3.0, "a1"), (2.5, "a2")])  # a clock step back
    b = WsRecord("X.ws.2", "wss://x/b", 0.0, [], [(2.0, "b0"), (3.0, "b1")])
    order = session(connections=[a, b]).frame_order()
    assert [(ci, j) for _, ci, j in order] == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)]


@pytest.mark.parametrize("frame", ['{"stream": "btcusdt@trade"}', gzip.compress(b'{"ch": "market"}'), ""])
def test_the_envelope_carries_the_exact_frame_its_recorded_time_and_place(frame: str | bytes) -> None:
    wrapped = wrap_frame(frame, 1633998512.062618, 17, True)
    assert type(wrapped) is type(frame)
    assert unwrap_frame(wrapped) == (frame, 1633998512.062618, 17, True)
    assert unwrap_frame(frame) is None
    assert parse_ack(ack_frame(17)) == 17 and parse_ack('{"op": "pong"}') is None


def test_the_recorder_writes_binary_frames_as_b64_and_a_session_reads_their_exact_bytes(tmp_path: Path) -> None:
    recorder = SessionRecorder(tmp_path, "HUOBI", {"trades": ["BTC-USDT"]})
    frame = gzip.compress(b'{"ch":"market.btcusdt.trade.detail"}')

    async def record() -> None:
        await recorder(None, 1.0, "HUOBI.ws.1", connect="wss://api.huobi.pro/ws")
        await recorder('{"sub":"market.btcusdt.trade.detail"}', 1.1, "HUOBI.ws.1", send="wss://api.huobi.pro/ws")
        await recorder(frame, 1.2, "HUOBI.ws.1")
        await recorder('{"text": 1}', 1.3, "HUOBI.ws.1")

    asyncio.run(record())
    recorder.close()
    assert read_exchange(recorder.path) == "HUOBI"
    (conn,) = load_session(recorder.path).connections
    assert conn.frames == [(1.2, frame), (1.3, '{"text": 1}')] and conn.addr == "wss://api.huobi.pro/ws"


def test_binary_frames_of_earlier_recordings_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    lines = [{"t": "header", "exchange": "OKX", "config": {}},
             {"t": "recv", "conn": "OKX.ws.1", "ts": 2, "data_b64": base64.b64encode(b"\x00\x01").decode()}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert load_session(path).connections[0].frames == [(2.0, b"\x00\x01")]


@pytest.mark.parametrize(("content", "where"), [
    (b'{"t":"header","exchange":"X","config":{"trades":"BTC-USDT"}}\n', ":1:"),  # symbols not a list
    (b'{"t":"header","exchange":"","config":{}}\n', ":1:"),
    (b'{"t":"header","exchange":"X","config":{}}\n{"t":"recv","conn":"a","ts":"soon","data":"x"}\n', ":2:"),
    (b'{"t":"header","exchange":"X","config":{}}\n{"t":"http","conn":"a","ts":1}\n', ":2:"),
])
def test_a_malformed_record_is_named_by_file_and_line(tmp_path: Path, content: bytes, where: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(SessionError, match=f"^{path}{where}"):
        load_session(path)
