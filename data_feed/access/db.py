"""The SQL database (SQLite by default, MySQL/MariaDB or PostgreSQL by URL): start-up config history.

Every start records the effective config and its hash, so an operator can tell
which settings produced which part of the lake.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import make_url

from data_feed.contracts.config import Config

METADATA = MetaData()

CONFIG_HISTORY = Table(
    "config_history",
    METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("config_hash", String(64), nullable=False, index=True),
    Column("config_json", Text, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, pool_pre_ping=True)


def save_effective_config(engine: Engine, cfg: Config) -> int:
    """Record this start's config; returns the new row id."""
    METADATA.create_all(engine)
    row = {
        "started_at": datetime.now(UTC),
        "config_hash": cfg.config_hash(),
        "config_json": cfg.canonical_json(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    with engine.begin() as conn:
        result = conn.execute(insert(CONFIG_HISTORY).values(**row))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def config_history(engine: Engine, limit: int = 20) -> list[dict[str, object]]:
    METADATA.create_all(engine)
    query = select(CONFIG_HISTORY).order_by(CONFIG_HISTORY.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
