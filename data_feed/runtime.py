"""Layout of a run directory: where the spawner and its roles leave state for each other.

Kept free of heavy imports: the CLI calls ``prepare_environment`` before
prometheus-client is imported, because multiprocess mode is chosen at import.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def prepare_environment(self) -> None:
        """Create the layout and point prometheus multiprocess mode at a fresh metrics dir."""
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


def trust_simulator(runtime: Runtime) -> None:
    """Make aiohttp, websockets and requests trust the simulator's self-signed certificate.

    Must run before aiohttp is imported: it builds its default SSL context at import.
    """
    if runtime.sim_cert:
        os.environ["SSL_CERT_FILE"] = runtime.sim_cert
        os.environ["REQUESTS_CA_BUNDLE"] = runtime.sim_cert
