"""What a raw observer of the gateway's TCP traffic sees: CURVE-encrypted frames, no topic, no value."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_feed.access.db import make_engine
from tests.access.harness import Stack, start_stack
from tests.access.test_gateway import collect
from tests.harness import wait_for


class Relay:
    """A TCP relay between the client and the gateway that records every byte both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.captured = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.server.accept()
            except OSError:
                return
            outbound = socket.create_connection(self.target)
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.captured += data
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            s.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, make_engine(f"sqlite:///{tmp_path / 'access.db'}"))
    yield s
    s.close()


def test_raw_tcp_capture_holds_no_plaintext_topic_or_value(stack: Stack) -> None:
    host, port = stack.endpoint.removeprefix("tcp://").rsplit(":", 1)
    relay = Relay((host, int(port)))
    made = stack.consumer("alice", ("binance-1s", "*"))
    alice = stack.client(made, on_control=lambda m: None)
    alice.endpoint = f"tcp://127.0.0.1:{relay.port}"
    alice.close()
    alice.sock, alice.monitor = alice._connect()
    alice.subscribe("features.1s.BINANCE.*")
    got = wait_for(lambda: collect(alice, 0.5), 10, "batches through the relay")
    relay.close()
    wire = bytes(relay.captured)
    assert len(wire) > 10_000 and len(got) > 10
    for plain in (b"features", b"BINANCE", b"BTC-USDT", b"c/alice", b"control", b"trade_count",
                  struct.pack(">d", 2.5), made.public_key.encode(), made.secret_key.encode()):
        assert plain not in wire, f"{plain!r} is readable on the wire"
