"""The permission table on SQLite, MariaDB and PostgreSQL: Alembic migration on first use, the state machine,
the audit of every change with who and when, and no secret stored in clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from data_feed.access import store
from data_feed.access.patterns import PatternError, check_pattern, covered, may_overlap
from data_feed.access.tables import CONSUMERS, METADATA, VERSION_TABLE, Status


def _setup(engine: sa.Engine) -> store.Secrets:
    made = store.add_consumer(engine, "alice", "ops")
    store.add_dataset(engine, "binance-1s", "features.1s.BINANCE.*", "ops")
    return made


def test_first_use_applies_the_alembic_migration(access_engine: sa.Engine) -> None:
    _setup(access_engine)
    names = set(sa.inspect(access_engine).get_table_names())
    assert set(METADATA.tables) | {VERSION_TABLE} <= names
    with access_engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "0002"


def test_a_database_at_revision_0001_is_upgraded_keeping_its_rows(access_engine: sa.Engine) -> None:
    store.migrate(access_engine, "0001")
    assert "window_start" not in {c["name"] for c in sa.inspect(access_engine).get_columns("permissions")}
    with access_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO datasets (name, pattern, description, preview_delay_seconds, "
                             "preview_normalize, created_at) VALUES ('old', 'trades.*.*', '', 0, false, "
                             "'2026-01-01 00:00:00')"))
    store.migrate(access_engine)
    assert "window_start" in {c["name"] for c in sa.inspect(access_engine).get_columns("permissions")}
    assert [d["name"] for d in store.datasets(access_engine)] == ["old"]


def test_only_legal_transitions_and_every_one_audited_with_who_and_when(access_engine: sa.Engine) -> None:
    _setup(access_engine)
    before = datetime.now(UTC) - timedelta(seconds=5)
    with pytest.raises(store.AccessError, match="no permission -> GRANTED is not allowed"):
        store.transition(access_engine, "alice", "binance-1s", Status.GRANTED, "boss")
    steps = [(Status.REQUESTED, "alice"), (Status.DENIED, "boss"), (Status.GRANTED, "boss"),
             (Status.REVOKED, "boss"), (Status.REQUESTED, "alice"), (Status.GRANTED, "chief")]
    for to, who in steps:
        store.transition(access_engine, "alice", "binance-1s", to, who, reason=f"{who} says {to}")
    with pytest.raises(store.AccessError, match="GRANTED -> REQUESTED is not allowed"):
        store.transition(access_engine, "alice", "binance-1s", Status.REQUESTED, "alice")
    with pytest.raises(store.AccessError, match="unknown consumer 'mallory'"):
        store.transition(access_engine, "mallory", "binance-1s", Status.REQUESTED, "x")
    with pytest.raises(store.AccessError, match="unknown dataset 'nope'"):
        store.transition(access_engine, "alice", "nope", Status.REQUESTED, "x")
    events = [e for e in store.audit(access_engine, "alice") if e["dataset"] is not None]
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in events] == [
        (None, "REQUESTED", "alice"), ("REQUESTED", "DENIED", "boss"), ("DENIED", "GRANTED", "boss"),
        ("GRANTED", "REVOKED", "boss"), ("REVOKED", "REQUESTED", "alice"), ("REQUESTED", "GRANTED", "chief")]
    assert all(store.utc(e["at"]) >= before for e in events)  # type: ignore[operator]
    assert events[1]["reason"] == "boss says DENIED"
    (perm,) = store.permissions(access_engine, "alice")
    assert (perm["status"], perm["decided_by"]) == ("GRANTED", "chief")


def test_only_granted_unexpired_permissions_of_enabled_consumers_entitle(access_engine: sa.Engine) -> None:
    _setup(access_engine)
    store.transition(access_engine, "alice", "binance-1s", Status.REQUESTED, "alice")
    assert store.entitlements(access_engine, "alice") == []  # REQUESTED gives nothing
    soon = datetime.now(UTC) + timedelta(seconds=30)
    store.transition(access_engine, "alice", "binance-1s", Status.GRANTED, "boss", scope="features.*.*.BTC-*",
                     expires_at=soon)
    (grant,) = store.entitlements(access_engine, "alice")
    assert abs((grant.expires_at - soon).total_seconds()) < 1  # type: ignore[operator]
    assert store.entitlements(access_engine, "alice", at=soon + timedelta(seconds=1)) == []
    store.set_disabled(access_engine, "alice", True, "boss", "unpaid")
    assert store.entitlements(access_engine, "alice") == []
    assert store.snapshot(access_engine).keys == {}


def test_secrets_are_never_stored_in_clear(access_engine: sa.Engine) -> None:
    made = _setup(access_engine)
    rotated = store.rotate_consumer(access_engine, "alice", "ops")
    dump = []
    with access_engine.connect() as conn:
        for table in METADATA.sorted_tables:
            dump += [str(v) for row in conn.execute(sa.select(table)) for v in row]
        stored = conn.execute(sa.select(CONSUMERS.c.public_key)).scalar()
    text = "\n".join(dump)
    for secret in (made.secret_key, made.token, rotated.secret_key, rotated.token):
        assert secret not in text
    assert stored == rotated.public_key
    assert store.verify_token(access_engine, "alice", rotated.token)
    assert not store.verify_token(access_engine, "alice", made.token)


def test_patterns_cover_topics_by_part_and_reject_unknown_channels() -> None:
    assert covered("features.1s.BINANCE.BTC-USDT", "features.1s.BINANCE.*", "*")
    assert not covered("features.1s.KRAKEN.BTC-USDT", "features.1s.BINANCE.*", "*")
    assert not covered("features.1s.BINANCE.ETH-USDT", "features.1s.*.*", "features.*.*.BTC-*")
    assert may_overlap("features.", "features.1s.BINANCE.*")
    assert may_overlap("features.1s.BIN", "features.1s.BINANCE.*")
    assert not may_overlap("features.1s.KRA", "features.1s.BINANCE.*")
    with pytest.raises(PatternError, match="unknown channel"):
        check_pattern("trade.BINANCE.*")
