"""Layout of a run directory: where the spawner and its roles leave state for each other.

Kept free of heavy imports: the CLI calls ``prepare_environment`` before
prometheus-client is imported, because multiprocess mode is chosen at import.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE_NAME = "spawner.lock"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RunDirBusy(RuntimeError):
    """Another pipeline holds the run directory's lock."""

    def __init__(self, root: Path, pid: str) -> None:
        super().__init__(f"another data-feed run (pid {pid or '?'}) is using {root}; stop it first, or give this "
                         "run its own spawner.run_dir")
        self.pid = pid


class RunDirLock:
    """An exclusive ``flock`` on ``{run_dir}/spawner.lock``, held for the spawner's life.

    The kernel drops it when the holder dies, however it dies, so a run after a crash starts normally
    (and recovers what the crashed run left). The file names the holder's PID for the refusal message.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the spawner's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            pid = handle.read().strip()
            handle.close()
            raise RunDirBusy(self.path.parent, pid) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def probe(self) -> None:
        """``RunDirBusy`` if a running pipeline holds the lock; creates nothing (for checks before start)."""
        try:
            handle = open(self.path)  # noqa: SIM115 - closed below, its lock with it
        except OSError:
            return  # no lock file: nobody ever ran here
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirBusy(self.path.parent, handle.read().strip()) from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process starting it (the spawner) dies.

    Used with ``start_new_session=True`` (own session: Ctrl-C in the terminal reaches only the spawner,
    which stops every role in data-flow order). If the spawner is already gone when the child gets
    there, the child exits at once rather than run as an orphan. SIGKILL for roles (everything they
    accepted is in Redis, the spill or a journal), SIGTERM for redis-server (it writes its AOF).
    """
    parent = os.getpid()

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


_HELD: dict[Path, RunDirLock] = {}  # run directories this process has claimed


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def effective_config(self) -> Path:
        return self.root / "effective-config.json"

    @property
    def runtime_file(self) -> Path:
        return self.root / "runtime.json"

    @property
    def spawner_file(self) -> Path:
        return self.root / "spawner.json"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def sim_dir(self) -> Path:
        return self.root / "sim"

    @property
    def sim_ready_file(self) -> Path:
        """Written by the simulator once it listens (with the default ``simulator.cert_dir``)."""
        return self.sim_dir / SIM_READY_NAME

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def prepare_environment(self) -> None:
        """Claim the run directory (``RunDirBusy`` while another pipeline holds it; the lock is then held
        for this process's life), create the layout and point prometheus multiprocess mode at a fresh
        metrics dir."""
        if self.root.resolve() not in _HELD:
            _HELD[self.root.resolve()] = RunDirLock(self.root).acquire()
        for path in (self.root, self.redis_dir, self.sim_dir, self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        os.environ[MULTIPROC_ENV] = str(self.metrics_dir)


@dataclass(frozen=True)
class Runtime:
    """What roles need to know that the config does not say: resolved at start by the spawner."""

    redis_url: str
    sim_base_url: str | None = None  # https://localhost:PORT when any exchange is simulated
    sim_ws_base: str | None = None
    sim_cert: str | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Runtime:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(**data)


SIM_CERT_NAME = "sim-cert.pem"  # in simulator.cert_dir: written by the simulator, trusted by collectors
SIM_READY_NAME = "ready.json"  # in simulator.cert_dir: {"port", "cert", "base_url"} once the simulator listens


def trust_simulator(cfg: Any) -> None:
    """Make aiohttp, websockets and requests trust the simulator's self-signed certificate when the config's
    exchanges are served by it (``cfg`` is a ``config.Config``).

    Must run before aiohttp is imported: it builds its default SSL context at import.
    """
    if cfg.served():
        cert = str(cfg.simulator_cert_dir() / SIM_CERT_NAME)
        os.environ["SSL_CERT_FILE"] = cert
        os.environ["REQUESTS_CA_BUNDLE"] = cert
