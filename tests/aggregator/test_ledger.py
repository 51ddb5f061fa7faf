"""The aggregator's journal ledger alone (no Redis): what a commit acknowledges, drops and trims below."""

from __future__ import annotations

from data_feed.aggregator.ledger import JournalRecord, Ledger, Settlement
from data_feed.lake.layout import SliceKey

STREAM = "df:stream:BINANCE:trades"
A = SliceKey("trades", "BINANCE", "BTC-USDT", 0)
B = SliceKey("trades", "BINANCE", "BTC-USDT", 60_000_000_000)
OTHER = SliceKey("trades", "BINANCE", "ETH-USDT", 0)


def test_journal_record_round_trips_through_its_packed_form() -> None:
    record = JournalRecord(B, ("1-0", "2-3"), committed=False)
    assert JournalRecord.unpack(record.pack()) == record
    assert JournalRecord.unpack(JournalRecord(A, (), True).pack()) == JournalRecord(A, (), True)


def test_an_entry_is_acknowledged_only_once_every_slice_it_feeds_is_committed() -> None:
    ledger = Ledger([STREAM])
    ledger.hold(STREAM, "1-0", {A, B})
    ledger.read_up_to(STREAM, "1-0")

    first = ledger.commit(STREAM, "a.parquet", JournalRecord(A, ("1-0",), False), settle=True)
    assert first == Settlement(done=[], stale=[], floor=None)  # B still waits: nothing to ack or trim
    assert ledger.in_lake(A, "1-0") and not ledger.in_lake(B, "1-0")

    second = ledger.commit(STREAM, "b.parquet", JournalRecord(B, ("1-0",), False), settle=True)
    assert second.done == ["1-0"]
    assert sorted(second.stale) == ["a.parquet", "b.parquet"]  # every entry of both records is acknowledged
    assert second.floor == "1-1"  # nothing pending: just past the last entry read
    ledger.forget(STREAM, second.stale)
    assert ledger.journal[STREAM] == {} and ledger.committed == {}
    assert ledger.unacknowledged() == 0


def test_the_trim_floor_is_the_oldest_entry_still_unacknowledged() -> None:
    ledger = Ledger([STREAM])
    for eid, sk in (("5-0", A), ("6-0", OTHER), ("7-0", A)):
        ledger.hold(STREAM, eid, {sk})
        ledger.read_up_to(STREAM, eid)
    settled = ledger.commit(STREAM, "a.parquet", JournalRecord(A, ("5-0", "7-0"), False), settle=True)
    assert settled.done == ["5-0", "7-0"]
    assert settled.floor == "6-0"  # 6-0 (ETH) is not committed: the stream keeps it and what follows
    assert settled.stale == ["a.parquet"]
    assert ledger.unacknowledged() == 1


def test_a_record_stays_in_the_journal_while_one_of_its_entries_is_unacknowledged() -> None:
    ledger = Ledger([STREAM])
    ledger.hold(STREAM, "1-0", {A, OTHER})
    ledger.hold(STREAM, "2-0", {A})
    settled = ledger.commit(STREAM, "a.parquet", JournalRecord(A, ("1-0", "2-0"), False), settle=True)
    assert settled.done == ["2-0"]  # 1-0 still feeds OTHER
    assert settled.stale == []  # a.parquet names 1-0, not yet acknowledged
    assert settled.floor == "1-0"
    assert ledger.settled_records(STREAM) == []
    ledger.acknowledged(STREAM, ["1-0"])
    assert ledger.settled_records(STREAM) == ["a.parquet"]


def test_a_redone_write_is_committed_without_settling_anything() -> None:
    """Recovery commits redone files with ``settle=False``: the entries are re-read afterwards and skipped
    record by record, so nothing may be acknowledged or trimmed yet."""
    ledger = Ledger([STREAM])
    settled = ledger.commit(STREAM, "a.parquet", JournalRecord(A, ("1-0", "2-0"), False), settle=False)
    assert settled == Settlement([], [], None)
    assert ledger.in_lake(A, "1-0") and ledger.in_lake(A, "2-0")
    assert ledger.journal[STREAM]["a.parquet"].committed


def test_forgetting_one_record_keeps_the_other_records_entries_of_the_same_slice() -> None:
    """Late records of a landed slice go to an additional part: two records of one slice."""
    ledger = Ledger([STREAM])
    ledger.remember(STREAM, "a-1.parquet", JournalRecord(A, ("1-0",), True))
    ledger.remember(STREAM, "a-2.parquet", JournalRecord(A, ("9-0",), True))
    ledger.forget(STREAM, ["a-1.parquet"])
    assert not ledger.in_lake(A, "1-0") and ledger.in_lake(A, "9-0")
    ledger.forget(STREAM, ["a-2.parquet"])
    assert A not in ledger.committed
