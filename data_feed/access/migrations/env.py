"""Alembic environment of the permission table: run on the connection ``store.migrate`` passes in."""

from __future__ import annotations

from alembic import context

from data_feed.access.tables import METADATA, VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
