"""The permission table's schema: consumers, datasets, permissions and their append-only audit.

One definition, used by the store and the gateway; the Alembic migrations
(``data_feed/access/migrations/versions``) spell out each revision's change, so a database at any
revision reaches this schema. Times are stored as UTC; backends that drop the zone (SQLite, MariaDB)
give them back naive and ``store.utc`` puts it back.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

METADATA = MetaData()
VERSION_TABLE = "access_alembic_version"  # Alembic's own table, named apart from any other migration history
NAME_LENGTH = 64
PATTERN_LENGTH = 255
Z85_KEY_LENGTH = 40  # a CURVE public key in Z85


class Status(StrEnum):
    REQUESTED = "REQUESTED"
    GRANTED = "GRANTED"
    DENIED = "DENIED"
    REVOKED = "REVOKED"


def _id() -> Column[int]:
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


CONSUMERS = Table(
    "consumers",
    METADATA,
    _id(),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("public_key", String(Z85_KEY_LENGTH), nullable=False, unique=True),  # CURVE, Z85; the secret is not kept
    Column("token_hash", String(128), nullable=False),  # scrypt of the API token (hex); the token is not kept
    Column("token_salt", String(64), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True)),
)

DATASETS = Table(
    "datasets",
    METADATA,
    _id(),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    # a topic pattern, one fnmatch pattern per dot-separated part: features.1s.BINANCE.* or trades.*.BTC-USDT
    Column("pattern", String(PATTERN_LENGTH), nullable=False),
    Column("description", Text, nullable=False, default=""),
    # the preview consumers without a grant may receive: at most one batch per interval, delayed, normalized
    Column("preview_interval_seconds", Float),  # null: no preview
    Column("preview_delay_seconds", Float, nullable=False, default=0.0),
    Column("preview_normalize", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

PERMISSIONS = Table(
    "permissions",
    METADATA,
    _id(),
    Column("consumer_id", BigInteger().with_variant(Integer, "sqlite"), ForeignKey("consumers.id"), nullable=False),
    Column("dataset_id", BigInteger().with_variant(Integer, "sqlite"), ForeignKey("datasets.id"), nullable=False),
    # a topic pattern narrowing the dataset (the same form); "*" or the dataset's pattern for all of it
    Column("scope", String(PATTERN_LENGTH), nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    # the lake rows query --as may read, by exchange time (ts_event) [start, end); null: unbounded (rev. 0002)
    Column("window_start", DateTime(timezone=True)),
    Column("window_end", DateTime(timezone=True)),
    Column("decided_by", String(NAME_LENGTH)),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("consumer_id", "dataset_id", name="uq_permissions_consumer_dataset"),
)

# Append-only: every change of a permission, and consumer lifecycle changes (dataset and permission null,
# from/to ADDED, DISABLED, ENABLED, ROTATED). Never updated, never deleted.
PERMISSION_EVENTS = Table(
    "permission_events",
    METADATA,
    _id(),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(NAME_LENGTH), nullable=False),
    Column("consumer", String(NAME_LENGTH), nullable=False),
    Column("dataset", String(NAME_LENGTH)),
    Column("permission_id", BigInteger().with_variant(Integer, "sqlite")),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)
