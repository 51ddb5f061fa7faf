"""The permission table: consumers, datasets, permissions, permission_events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("public_key", sa.String(40), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("token_salt", sa.String(64), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("last_seen", TS),
    )
    op.create_table(
        "datasets",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("preview_interval_seconds", sa.Float),
        sa.Column("preview_delay_seconds", sa.Float, nullable=False),
        sa.Column("preview_normalize", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "permissions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("consumer_id", ID, sa.ForeignKey("consumers.id"), nullable=False),
        sa.Column("dataset_id", ID, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("decided_by", sa.String(64)),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("consumer_id", "dataset_id", name="uq_permissions_consumer_dataset"),
    )
    op.create_table(
        "permission_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(64)),
        sa.Column("permission_id", ID),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("permission_events", "permissions", "datasets", "consumers"):
        op.drop_table(table)
