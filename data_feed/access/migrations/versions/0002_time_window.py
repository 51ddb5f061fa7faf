"""A grant's time window: the lake rows (by exchange time) ``query --as`` may read.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("permissions", sa.Column("window_start", sa.DateTime(timezone=True)))
    op.add_column("permissions", sa.Column("window_end", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("permissions", "window_end")
    op.drop_column("permissions", "window_start")
