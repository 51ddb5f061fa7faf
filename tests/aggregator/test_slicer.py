"""The slicer alone (``aggregator.slicer``): pure, no Redis and no files. Rows of one entry cut by (symbol, slice
start by exchange time), each part in entry order, the same cut every time (the aggregator's redo after a
crash relies on it), and history (an entry whose rows of one symbol span many slices) grouped by day except
for the live-only channels."""

from __future__ import annotations

import pyarrow as pa
import pytest

from data_feed.aggregator.slicer import HISTORY_MIN_SLICES, NS_PER_DAY, split_entry
from data_feed.contracts.schemas import NS_PER_SECOND, SYMBOL_COLUMN, Channel, schema_for

WIDTH = 60 * NS_PER_SECOND
DAY0 = 1_700_006_400 * NS_PER_SECOND  # a UTC midnight (2023-11-15)


def trades(rows: list[tuple[str, int, int]]) -> pa.Table:
    """(symbol, ts_event ns, id) rows as a decoded trades entry (``cache.decode_batch``'s shape)."""
    schema = schema_for(Channel.TRADES)
    n = len(rows)
    return pa.table({SYMBOL_COLUMN: [r[0] for r in rows], "ts_event": [r[1] for r in rows],
                     "ts_recv": [r[1] + 1000 for r in rows], "id": [r[2] for r in rows],
                     "id_text": pa.nulls(n, pa.string()), "side": ["buy"] * n, "price": [1.0] * n,
                     "amount": [2.0] * n}, schema=pa.schema([pa.field(SYMBOL_COLUMN, pa.string()), *schema]))


def test_an_empty_entry_has_no_parts() -> None:
    assert split_entry(Channel.TRADES, "BINANCE", trades([]), WIDTH) == []


def test_one_symbol_in_one_slice_is_one_part_without_the_symbol_column() -> None:
    table = trades([("BTC-USDT", DAY0 + i, i) for i in range(5)])
    ((key, part),) = split_entry(Channel.TRADES, "BINANCE", table, WIDTH)
    assert (key.channel, key.exchange, key.symbol, key.start_ns) == ("trades", "BINANCE", "BTC-USDT", DAY0)
    assert part.column_names == schema_for(Channel.TRADES).names
    assert part["id"].to_pylist() == list(range(5))


def test_rows_are_cut_by_symbol_and_slice_start_keeping_entry_order() -> None:
    rows = [("BTC-USDT", DAY0 + 59 * NS_PER_SECOND, 1), ("ETH-USDT", DAY0 + 1, 2),
            ("BTC-USDT", DAY0 + 60 * NS_PER_SECOND, 3), ("BTC-USDT", DAY0 + 10, 4),  # late, back in slice 0
            ("ETH-USDT", DAY0 + 61 * NS_PER_SECOND, 5), ("BTC-USDT", DAY0 + 119 * NS_PER_SECOND, 6)]
    parts = split_entry(Channel.TRADES, "BINANCE", trades(rows), WIDTH)
    got = {(k.symbol, (k.start_ns - DAY0) // WIDTH): p["id"].to_pylist() for k, p in parts}
    assert got == {("BTC-USDT", 0): [1, 4], ("BTC-USDT", 1): [3, 6], ("ETH-USDT", 0): [2], ("ETH-USDT", 1): [5]}
    assert sum(p.num_rows for _, p in parts) == len(rows)


def test_the_same_entry_is_cut_the_same_way_every_time() -> None:
    rows = [(f"S{i % 3}", DAY0 + (i * 7919 % 500) * NS_PER_SECOND, i) for i in range(300)]
    first = split_entry(Channel.TRADES, "BINANCE", trades(rows), WIDTH)
    again = split_entry(Channel.TRADES, "BINANCE", trades(rows), WIDTH)
    assert [(k, p.to_pylist()) for k, p in first] == [(k, p.to_pylist()) for k, p in again]


def entry(channel: Channel, ts: list[int]) -> pa.Table:
    """A decoded entry of any channel, one symbol, rows at the instants ``ts`` (other columns filler)."""
    schema = schema_for(channel)
    n = len(ts)
    cols: dict[str, pa.Array] = {SYMBOL_COLUMN: pa.array(["BTC-USDT"] * n)}
    for field in schema:
        if field.name in ("ts_event", "ts_recv", "start", "stop"):
            cols[field.name] = pa.array(ts, field.type)
        elif field.nullable:
            cols[field.name] = pa.nulls(n, field.type)
        else:
            cols[field.name] = pa.array([False if pa.types.is_boolean(field.type) else 0] * n).cast(field.type)
    return pa.table(cols, schema=pa.schema([pa.field(SYMBOL_COLUMN, pa.string()), *schema]))


@pytest.mark.parametrize("channel", [Channel.TRADES, Channel.L2_BOOK])
def test_live_only_channels_are_never_grouped_as_history(channel: Channel) -> None:
    parts = split_entry(channel, "BINANCE", entry(channel, [DAY0 + i * WIDTH for i in range(HISTORY_MIN_SLICES + 2)]),
                        WIDTH)
    assert [(k.start_ns - DAY0) // WIDTH for k, _ in parts] == list(range(HISTORY_MIN_SLICES + 2))


@pytest.mark.parametrize("channel", [Channel.CANDLES, Channel.FUNDING, Channel.OPEN_INTEREST])
def test_history_spanning_many_slices_goes_to_its_days_first_slice_one_part_per_day(channel: Channel) -> None:
    n = 2 * 24 * 60  # two days a minute apart, one symbol, in one entry (a subscription's snapshot of the past)
    parts = split_entry(channel, "BINANCE", entry(channel, [DAY0 + i * WIDTH for i in range(n)]), WIDTH)
    assert [(k.start_ns - DAY0) // NS_PER_DAY for k, _ in parts] == [0, 1]
    assert all(k.start_ns % NS_PER_DAY == 0 for k, _ in parts)
    assert [p.num_rows for _, p in parts] == [n // 2, n // 2]


def test_an_entry_below_the_history_span_is_cut_by_slice() -> None:
    ts = [DAY0 + i * WIDTH for i in range(HISTORY_MIN_SLICES - 1)]
    parts = split_entry(Channel.CANDLES, "BINANCE", entry(Channel.CANDLES, ts), WIDTH)
    assert [k.start_ns for k, _ in parts] == ts
