"""Permission-table engines on SQLite and on the real MariaDB and PostgreSQL servers (``tests/access/test_db.py``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from data_feed.access import store
from data_feed.access.db import make_engine
from data_feed.access.tables import METADATA, VERSION_TABLE
from tests.conftest import SQL_BACKENDS, server_engine


def fresh_server_engine(backend: str) -> sa.Engine:
    """The server's database without the permission table (migrated again on first use)."""
    engine = server_engine(backend)
    METADATA.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    store.forget_migrations()
    return engine


@pytest.fixture(params=SQL_BACKENDS)
def access_engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        return make_engine(f"sqlite:///{tmp_path / 'access.db'}")
    return fresh_server_engine(request.param)
