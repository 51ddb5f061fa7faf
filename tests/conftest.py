"""Shared fixtures: a real private redis-server per test session, config builders."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from data_feed.config import DEFAULT_CONFIG_PATH, Config, parse_config
from data_feed.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT.parent / "shared" / "captures"
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: PrivateRedis) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


def default_config_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    return copy.deepcopy(data)


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """The default config with the lake, run dir and database moved under tmp_path, plus overrides."""
    data = default_config_dict()
    data["lake"]["root"] = str(tmp_path / "lake")
    data["spawner"]["run_dir"] = str(tmp_path / "run")
    data["spawner"]["http_port"] = 0
    data["database"]["url"] = f"sqlite:///{tmp_path / 'run' / 'data-feed.db'}"
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name].update(value)
        else:
            data[name] = value
    return parse_config(data, "test")
