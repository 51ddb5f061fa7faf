"""A TCP proxy in front of a real redis-server that can lose the reply to a transaction.

Armed with ``drop_next_exec_reply``, it forwards the client's ``EXEC`` to Redis (which runs the
transaction) and then closes the client's connection before Redis's reply reaches it: the writer
sees a connection error for a write that did happen, the case idempotent writes exist for.
"""

from __future__ import annotations

import asyncio
import contextlib

EXEC_COMMAND = b"*1\r\n$4\r\nEXEC\r\n"


class LossyRedisProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.drop_next_exec_reply = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> LossyRedisProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        lose = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.drop_next_exec_reply and EXEC_COMMAND in data:
                    self.drop_next_exec_reply = False
                    lose.set()
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if lose.is_set():
                    await asyncio.sleep(0.2)  # let Redis finish the transaction, then lose its reply
                    self.dropped += 1
                    client_w.close()
                    server_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await asyncio.gather(upstream(), downstream())
