"""The permission table's operations: consumers, datasets, the permission state machine and its audit.

Data flow: the ``data-feed access`` CLI writes here; the gateway reads ``snapshot()`` every
``gateway.refresh_seconds``; ``query --as`` reads ``entitlements()``. Every change writes one
``permission_events`` row in the same transaction as the change itself, so the audit cannot miss one.

The state machine (``TRANSITIONS``): a permission starts REQUESTED; REQUESTED -> GRANTED or DENIED;
GRANTED -> REVOKED; DENIED -> GRANTED (a decision reconsidered) or REQUESTED (asked again);
REVOKED -> REQUESTED (asked again; a revoked grant is never silently restored). Only a GRANTED permission
whose ``expires_at`` is unset or in the future, of a consumer that is not disabled, gives data.

Secrets: a consumer's CURVE secret key and API token are returned once by ``add_consumer`` /
``rotate_consumer`` and never stored nor logged; the table keeps the public key and a salted scrypt of
the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import zmq
from sqlalchemy import Engine

from data_feed.access.tables import (
    CONSUMERS,
    DATASETS,
    PERMISSION_EVENTS,
    PERMISSIONS,
    Status,
)

LOG = logging.getLogger("data_feed.access")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TRANSITIONS: dict[Status | None, frozenset[Status]] = {
    None: frozenset({Status.REQUESTED}),
    Status.REQUESTED: frozenset({Status.GRANTED, Status.DENIED}),
    Status.GRANTED: frozenset({Status.REVOKED}),
    Status.DENIED: frozenset({Status.GRANTED, Status.REQUESTED}),
    Status.REVOKED: frozenset({Status.REQUESTED}),
}
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
WHOLE_DATASET = "*"
_migrated: set[str] = set()


class AccessError(ValueError):
    """An unknown consumer or dataset, a name taken, or a transition the state machine forbids."""


@dataclass(frozen=True)
class Secrets:
    """What a consumer is told once: its CURVE key pair (Z85) and API token."""

    consumer: str
    public_key: str
    secret_key: str
    token: str


@dataclass(frozen=True)
class Grant:
    """One effective entitlement: the dataset's pattern and the permission's scope (both must match)."""

    consumer: str
    dataset: str
    pattern: str
    scope: str
    expires_at: datetime | None
    updated_at: datetime
    window_start: datetime | None = None  # lake rows (ts_event) query --as may read: [start, end)
    window_end: datetime | None = None


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the permission table to the newest Alembic revision (once per engine URL and process)."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _migrated:
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin chatter; the outcome is logged below
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    if revision != "head":
        return
    _migrated.add(key)
    LOG.info("access: permission table at the newest revision on %s", engine.url.render_as_string())


def forget_migrations() -> None:
    """Tests that drop the tables: migrate again on next use."""
    _migrated.clear()


def hash_token(token: str, salt: bytes) -> str:
    return hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).hex()


def _new_secrets(name: str) -> tuple[Secrets, dict[str, Any]]:
    public, secret = zmq.curve_keypair()
    token = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    values = {"public_key": public.decode(), "token_hash": hash_token(token, salt), "token_salt": salt.hex()}
    return Secrets(name, public.decode(), secret.decode(), token), values


def _audit(conn: sa.Connection, actor: str, consumer: str, to: str, reason: str = "", dataset: str | None = None,
           permission_id: int | None = None, from_status: str | None = None) -> None:
    conn.execute(sa.insert(PERMISSION_EVENTS).values(
        at=now(), actor=actor, consumer=consumer, dataset=dataset, permission_id=permission_id,
        from_status=from_status, to_status=to, reason=reason))


def _consumer(conn: sa.Connection, name: str) -> sa.Row[Any]:
    row = conn.execute(sa.select(CONSUMERS).where(CONSUMERS.c.name == name)).first()
    if row is None:
        raise AccessError(f"unknown consumer {name!r}")
    return row


def _dataset(conn: sa.Connection, name: str) -> sa.Row[Any]:
    row = conn.execute(sa.select(DATASETS).where(DATASETS.c.name == name)).first()
    if row is None:
        raise AccessError(f"unknown dataset {name!r}")
    return row


# -- consumers ---------------------------------------------------------------------------------------------

def add_consumer(engine: Engine, name: str, actor: str) -> Secrets:
    migrate(engine)
    made, values = _new_secrets(name)
    with engine.begin() as conn:
        if conn.execute(sa.select(CONSUMERS.c.id).where(CONSUMERS.c.name == name)).first() is not None:
            raise AccessError(f"consumer {name!r} exists already (rotate its keys with 'access consumer rotate')")
        at = now()
        conn.execute(sa.insert(CONSUMERS).values(name=name, disabled=False, created_at=at, updated_at=at, **values))
        _audit(conn, actor, name, "ADDED")
    LOG.info("access: consumer %s added by %s (public key %s)", name, actor, made.public_key)
    return made


def rotate_consumer(engine: Engine, name: str, actor: str) -> Secrets:
    """New keys and token; the old ones stop working at the gateway's next refresh."""
    migrate(engine)
    made, values = _new_secrets(name)
    with engine.begin() as conn:
        _consumer(conn, name)
        conn.execute(sa.update(CONSUMERS).where(CONSUMERS.c.name == name).values(updated_at=now(), **values))
        _audit(conn, actor, name, "ROTATED")
    LOG.info("access: consumer %s keys rotated by %s (public key %s)", name, actor, made.public_key)
    return made


def set_disabled(engine: Engine, name: str, disabled: bool, actor: str, reason: str = "") -> None:
    migrate(engine)
    with engine.begin() as conn:
        _consumer(conn, name)
        conn.execute(sa.update(CONSUMERS).where(CONSUMERS.c.name == name).values(disabled=disabled,
                                                                                 updated_at=now()))
        _audit(conn, actor, name, "DISABLED" if disabled else "ENABLED", reason)
    LOG.info("access: consumer %s %s by %s", name, "disabled" if disabled else "enabled", actor)


def verify_token(engine: Engine, name: str, token: str) -> bool:
    migrate(engine)
    with engine.connect() as conn:
        row = _consumer(conn, name)
    return not row.disabled and hmac.compare_digest(hash_token(token, bytes.fromhex(row.token_salt)), row.token_hash)


def consumers(engine: Engine) -> list[dict[str, Any]]:
    migrate(engine)
    cols = [CONSUMERS.c.name, CONSUMERS.c.public_key, CONSUMERS.c.disabled, CONSUMERS.c.created_at,
            CONSUMERS.c.last_seen]
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(*cols).order_by(CONSUMERS.c.name))]


def touch(engine: Engine, names: set[str]) -> None:
    """Record that these consumers were seen (the gateway, at most once per refresh)."""
    if names:
        with engine.begin() as conn:
            conn.execute(sa.update(CONSUMERS).where(CONSUMERS.c.name.in_(sorted(names))).values(last_seen=now()))


# -- datasets ----------------------------------------------------------------------------------------------

def add_dataset(engine: Engine, name: str, pattern: str, actor: str, description: str = "",
                preview_interval_seconds: float | None = None, preview_delay_seconds: float = 0.0,
                preview_normalize: bool = False) -> None:
    from data_feed.access.patterns import check_pattern

    check_pattern(pattern)
    migrate(engine)
    with engine.begin() as conn:
        if conn.execute(sa.select(DATASETS.c.id).where(DATASETS.c.name == name)).first() is not None:
            raise AccessError(f"dataset {name!r} exists already")
        conn.execute(sa.insert(DATASETS).values(
            name=name, pattern=pattern, description=description, preview_interval_seconds=preview_interval_seconds,
            preview_delay_seconds=preview_delay_seconds, preview_normalize=preview_normalize, created_at=now()))
    LOG.info("access: dataset %s (%s) added by %s", name, pattern, actor)


def datasets(engine: Engine) -> list[dict[str, Any]]:
    migrate(engine)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(DATASETS).order_by(DATASETS.c.name))]


# -- permissions: the state machine ------------------------------------------------------------------------

def transition(engine: Engine, consumer: str, dataset: str, to: Status, actor: str, reason: str = "",
               scope: str | None = None, expires_at: datetime | None = None,
               window: tuple[datetime | None, datetime | None] = (None, None)) -> None:
    """Move (consumer, dataset)'s permission to ``to`` if ``TRANSITIONS`` allows it; audit it."""
    migrate(engine)
    with engine.begin() as conn:
        crow, drow = _consumer(conn, consumer), _dataset(conn, dataset)
        where = (PERMISSIONS.c.consumer_id == crow.id) & (PERMISSIONS.c.dataset_id == drow.id)
        perm = conn.execute(sa.select(PERMISSIONS).where(where)).first()
        current = Status(perm.status) if perm is not None else None
        if to not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
            raise AccessError(f"{consumer} on {dataset}: {current or 'no permission'} -> {to} is not allowed "
                              f"(from {current or 'no permission'}: {allowed})")
        values = _changed_values(to, actor, scope, expires_at, window)
        if perm is None:
            values.setdefault("scope", WHOLE_DATASET)
            perm_id = conn.execute(sa.insert(PERMISSIONS).values(
                consumer_id=crow.id, dataset_id=drow.id, requested_at=values["updated_at"], **values,
            )).inserted_primary_key[0]  # type: ignore[index]
        else:
            perm_id = perm.id
            conn.execute(sa.update(PERMISSIONS).where(PERMISSIONS.c.id == perm.id).values(**values))
        _audit(conn, actor, consumer, to, reason, dataset, int(perm_id), current)
    LOG.info("access: %s on %s: %s -> %s by %s%s", consumer, dataset, current or "none", to, actor,
             f" ({reason})" if reason else "")


def _changed_values(to: Status, actor: str, scope: str | None, expires_at: datetime | None,
                    window: tuple[datetime | None, datetime | None]) -> dict[str, Any]:
    from data_feed.access.patterns import check_pattern

    values: dict[str, Any] = {"status": to.value, "updated_at": now()}
    if to is not Status.REQUESTED:
        values["decided_by"] = actor
    if scope is not None:
        check_pattern(scope)
        values["scope"] = scope
    if to is Status.GRANTED:
        values["expires_at"] = expires_at
        values["window_start"], values["window_end"] = window
    return values


def permissions(engine: Engine, consumer: str | None = None) -> list[dict[str, Any]]:
    migrate(engine)
    query = (sa.select(CONSUMERS.c.name.label("consumer"), DATASETS.c.name.label("dataset"), PERMISSIONS.c.scope,
                       PERMISSIONS.c.status, PERMISSIONS.c.expires_at, PERMISSIONS.c.window_start,
                       PERMISSIONS.c.window_end, PERMISSIONS.c.decided_by,
                       PERMISSIONS.c.requested_at, PERMISSIONS.c.updated_at)
             .join(CONSUMERS, CONSUMERS.c.id == PERMISSIONS.c.consumer_id)
             .join(DATASETS, DATASETS.c.id == PERMISSIONS.c.dataset_id)
             .order_by(CONSUMERS.c.name, DATASETS.c.name))
    if consumer is not None:
        query = query.where(CONSUMERS.c.name == consumer)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def audit(engine: Engine, consumer: str | None = None) -> list[dict[str, Any]]:
    migrate(engine)
    query = sa.select(PERMISSION_EVENTS).order_by(PERMISSION_EVENTS.c.id)
    if consumer is not None:
        query = query.where(PERMISSION_EVENTS.c.consumer == consumer)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def entitlements(engine: Engine, consumer: str, at: datetime | None = None) -> list[Grant]:
    """The consumer's effective grants at ``at`` (now): GRANTED, unexpired, the consumer enabled."""
    snap = snapshot(engine)
    if consumer not in snap.known:
        raise AccessError(f"unknown consumer {consumer!r}")
    return snap.grants_of(consumer, at or now())


@dataclass(frozen=True)
class Snapshot:
    """What the gateway decides from: every consumer's key, and every GRANTED permission of an enabled one."""

    keys: dict[str, str]  # public key (Z85) -> consumer name, enabled consumers only
    disabled: frozenset[str]
    known: frozenset[str]
    grants: tuple[Grant, ...]
    datasets: tuple[dict[str, Any], ...]
    changed_at: dict[str, datetime]  # consumer -> its row's last change (a disable's time)
    permission_changed: dict[tuple[str, str], datetime]  # (consumer, dataset) -> last change of the permission

    def grants_of(self, consumer: str, at: datetime) -> list[Grant]:
        return [g for g in self.grants
                if g.consumer == consumer and consumer not in self.disabled
                and (g.expires_at is None or g.expires_at > at)]


def snapshot(engine: Engine) -> Snapshot:
    migrate(engine)
    grant_query = (sa.select(CONSUMERS.c.name, DATASETS.c.name.label("dataset"), DATASETS.c.pattern,
                             PERMISSIONS.c.scope, PERMISSIONS.c.expires_at, PERMISSIONS.c.updated_at,
                             PERMISSIONS.c.window_start, PERMISSIONS.c.window_end)
                   .join(CONSUMERS, CONSUMERS.c.id == PERMISSIONS.c.consumer_id)
                   .join(DATASETS, DATASETS.c.id == PERMISSIONS.c.dataset_id)
                   .where(PERMISSIONS.c.status == Status.GRANTED.value))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(CONSUMERS.c.name, CONSUMERS.c.public_key, CONSUMERS.c.disabled,
                                      CONSUMERS.c.updated_at)).all()
        grants = tuple(Grant(r.name, r.dataset, r.pattern, r.scope, utc(r.expires_at), utc(r.updated_at) or now(),
                             utc(r.window_start), utc(r.window_end)) for r in conn.execute(grant_query))
        sets = tuple(dict(r._mapping) for r in conn.execute(sa.select(DATASETS)))
        changes = conn.execute(sa.select(CONSUMERS.c.name, DATASETS.c.name.label("dataset"), PERMISSIONS.c.updated_at)
                               .join(CONSUMERS, CONSUMERS.c.id == PERMISSIONS.c.consumer_id)
                               .join(DATASETS, DATASETS.c.id == PERMISSIONS.c.dataset_id)).all()
    return Snapshot(keys={r.public_key: r.name for r in rows if not r.disabled},
                    disabled=frozenset(r.name for r in rows if r.disabled),
                    known=frozenset(r.name for r in rows), grants=grants, datasets=sets,
                    changed_at={r.name: utc(r.updated_at) or now() for r in rows},
                    permission_changed={(r.name, r.dataset): utc(r.updated_at) or now() for r in changes})
