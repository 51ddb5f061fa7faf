"""Effective-config history on SQLite, MariaDB/MySQL and PostgreSQL (real servers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from data_feed.access.db import CONFIG_HISTORY, config_history, make_engine, save_effective_config
from data_feed.contracts.config import load_config
from tests.conftest import SQL_BACKENDS, server_engine


@pytest.fixture(params=SQL_BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        return make_engine(f"sqlite:///{tmp_path / 'sub' / 'df.db'}")
    engine = server_engine(request.param)
    CONFIG_HISTORY.drop(engine, checkfirst=True)
    return engine


def test_every_start_saves_config_and_hash(engine: sa.Engine) -> None:
    first = load_config()
    second = load_config(overrides={"lake.slice_seconds": 15})
    id1 = save_effective_config(engine, first)
    id2 = save_effective_config(engine, second)
    assert id2 > id1
    rows = config_history(engine)
    assert [r["config_hash"] for r in rows[:2]] == [second.config_hash(), first.config_hash()]
    saved = json.loads(str(rows[0]["config_json"]))
    assert saved["lake"]["slice_seconds"] == 15
    assert rows[0]["pid"] == os.getpid()
