"""Permission-table engines on SQLite and on the real MariaDB and PostgreSQL servers (``tests/test_db.py``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from data_feed.access import store
from data_feed.access.tables import METADATA, VERSION_TABLE
from data_feed.db import make_engine
from tests.conftest import IN_CI
from tests.test_db import MYSQL_URL, POSTGRES_URL


def fresh_server_engine(url: str) -> sa.Engine:
    """The server's database without the permission table (migrated again on first use); skipped without the
    server, except in CI, where it fails."""
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as err:
        if IN_CI:
            raise
        pytest.skip(f"no server at {url}: {err.orig}")
    METADATA.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    store.forget_migrations()
    return engine


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
def access_engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        return make_engine(f"sqlite:///{tmp_path / 'access.db'}")
    return fresh_server_engine(MYSQL_URL if request.param == "mysql" else POSTGRES_URL)
