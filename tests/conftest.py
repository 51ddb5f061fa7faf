"""Shared fixtures: a real private redis-server per test session, config builders."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
import yaml

from data_feed.access.db import make_engine
from data_feed.cache.redis_server import PrivateRedis
from data_feed.contracts.config import DEFAULT_CONFIG_PATH, Config, parse_config

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT.parent / "shared" / "captures"
IN_CI = os.environ.get("CI") == "true"


def missing(message: str) -> None:
    """A tool or server a test needs is not there: a failure in CI (which must run every test), a skip elsewhere."""
    if IN_CI:
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)
MYSQL_URL = os.environ.get("DATA_FEED_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
POSTGRES_URL = os.environ.get("DATA_FEED_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# parametrize a fixture over every SQL backend: SQLite and the real MariaDB and PostgreSQL servers
SQL_BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql),
                pytest.param("postgres", marks=pytest.mark.postgres)]


def server_engine(backend: str) -> sa.Engine:
    """An engine on the real MariaDB ("mysql") or PostgreSQL server; the test is skipped when the server is not
    there, except in CI, which must exercise both: there an absent server is a failure."""
    url = MYSQL_URL if backend == "mysql" else POSTGRES_URL
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as err:
        if IN_CI:
            raise
        pytest.skip(f"no server at {url}: {err.orig}")
    return engine


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
