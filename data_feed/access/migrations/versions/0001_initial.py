"""The permission table: consumers, datasets, permissions, permission_events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from data_feed.access.tables import CONSUMERS, DATASETS, PERMISSION_EVENTS, PERMISSIONS

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Revision 0001 is the schema as first defined in tables.py; later revisions change it with op.* calls.
TABLES = (CONSUMERS, DATASETS, PERMISSIONS, PERMISSION_EVENTS)


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind, checkfirst=False)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind)
