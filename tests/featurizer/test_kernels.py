"""The Cython kernels against an independent pandas computation, and merging slices is exact."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from featurizer._kernels import SLICE_DTYPE, Engine, _use_vector_width, empty_slice, merge, merge_runs, trade_slices
from featurizer.features import interval_ns, values

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
REL = 1e-9
TOP_LEVELS = 5
DEPTH_BPS = 10.0


def synthetic_trades(n: int, seed: int, span_s: int = 180) -> pd.DataFrame:
    """Trades with bursts and multi-second silences, so some slices are empty and some hold one trade."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, span_s * SECOND, n))
    silent = (ts - T0) // SECOND % 7 == 3  # every 7th second is empty
    ts = ts[~silent]
    ts = np.append(ts, T0 + (span_s + 5) * SECOND + 1234)  # a lone trade after a gap: a single-trade slice
    m = len(ts)
    price = 30_000 * np.exp(np.cumsum(rng.normal(0, 2e-4, m)))
    price = np.round(price, 2)
    return pd.DataFrame({"ts": ts, "price": price, "amount": rng.exponential(0.3, m),
                         "buy": rng.random(m) < 0.5})


def pandas_trade_features(df: pd.DataFrame, width: int) -> pd.DataFrame:
    key = df["ts"] // width * width
    g = df.assign(key=key, notional=df["price"] * df["amount"],
                  buy_vol=np.where(df["buy"], df["amount"], 0.0), sell_vol=np.where(df["buy"], 0.0, df["amount"]),
                  r2=np.log(df["price"] / df.groupby(key)["price"].shift()) ** 2).groupby("key")
    out = pd.DataFrame({
        "open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(), "close": g["price"].last(),
        "volume": g["amount"].sum(), "buy_volume": g["buy_vol"].sum(), "sell_volume": g["sell_vol"].sum(),
        "notional": g["notional"].sum(), "trade_count": g.size(), "realized_variance": g["r2"].sum(),
        "first_trade_ts": g["ts"].min(), "last_trade_ts": g["ts"].max(),
    })
    out["vwap"] = out["notional"] / out["volume"]
    full = pd.RangeIndex(int(key.min()), int(key.max()) + width, width)
    out = out.reindex(full)
    out["trade_count"] = out["trade_count"].fillna(0)
    for col in ("volume", "buy_volume", "sell_volume", "notional", "realized_variance"):
        out[col] = out[col].fillna(0.0)
    out[["first_trade_ts", "last_trade_ts"]] = out[["first_trade_ts", "last_trade_ts"]].fillna(-1)
    return out


def kernel_trades(df: pd.DataFrame, width: int) -> np.ndarray[Any, Any]:
    return trade_slices(df["ts"].to_numpy(np.int64), df["price"].to_numpy(np.float64),
                        df["amount"].to_numpy(np.float64), df["buy"].to_numpy(np.uint8), width)


def assert_columns_match(got: dict[str, Any], want: pd.DataFrame, columns: list[str]) -> None:
    for col in columns:
        np.testing.assert_allclose(np.asarray(got[col], dtype=np.float64), want[col].to_numpy(np.float64),
                                   rtol=REL, atol=0, equal_nan=True, err_msg=col)


TRADE_COLUMNS = ["open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "notional", "vwap",
                 "trade_count", "realized_variance", "first_trade_ts", "last_trade_ts"]


@pytest.mark.parametrize("width", [SECOND, 60 * SECOND])
def test_trade_kernel_equals_pandas_including_empty_and_single_trade_slices(width: int) -> None:
    df = synthetic_trades(20_000, seed=1)
    slices = kernel_trades(df, width)
    want = pandas_trade_features(df, width)
    assert list(slices["start"]) == list(want.index)
    assert_columns_match(values(slices), want, TRADE_COLUMNS)
    if width == SECOND:
        counts = slices["n_trades"]
        assert (counts == 0).sum() > 10 and (counts == 1).sum() >= 1  # the cases this test is about


def test_trade_kernel_on_no_trades_gives_no_slices() -> None:
    empty_i = np.empty(0, np.int64)
    empty_f = np.empty(0, np.float64)
    assert len(trade_slices(empty_i, empty_f, empty_f, np.empty(0, np.uint8), SECOND)) == 0


def exact_fields(slices: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Every state field, with double-double sums collapsed to the double they stand for."""
    vals = values(slices)
    return {name: vals[name] for name in vals} | {"start": slices["start"]}


def assert_identical(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> None:
    fa, fb = exact_fields(a), exact_fields(b)
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def test_merging_sixty_one_second_trade_slices_gives_exactly_the_one_minute_slice() -> None:
    df = synthetic_trades(50_000, seed=2, span_s=600)
    merged = merge_runs(kernel_trades(df, SECOND), 60 * SECOND)
    assert_identical(merged, kernel_trades(df, 60 * SECOND))


def test_merge_with_empty_slice_is_identity_and_merge_is_associative() -> None:
    df = synthetic_trades(3_000, seed=3, span_s=10)
    s = kernel_trades(df, SECOND)
    start = int(s["start"][0])
    assert_identical(merge(empty_slice(start), s[0:1]), s[0:1])
    assert_identical(merge(s[0:1], empty_slice(start)), s[0:1])
    left = merge(merge(s[0:1], s[1:2]), s[2:3])
    right = merge(s[0:1], merge(s[1:2], s[2:3]))
    assert_identical(left, right)


def test_merge_runs_rejects_wrong_dtype_and_unordered_input() -> None:
    with pytest.raises(TypeError):
        merge_runs(np.zeros(3), SECOND)
    s = kernel_trades(synthetic_trades(500, seed=4, span_s=5), SECOND)
    with pytest.raises(ValueError, match="ordered"):
        merge_runs(s[::-1].copy(), 60 * SECOND)


def test_interval_parsing() -> None:
    assert interval_ns("1s") == SECOND and interval_ns("1m") == 60 * SECOND and interval_ns("1d") == 86_400 * SECOND
    for bad in ("0s", "1x", "s", "1.5m"):
        with pytest.raises(ValueError, match="interval"):
            interval_ns(bad)


# -- order book ------------------------------------------------------------------------------------


def synthetic_book(messages: int, seed: int) -> pd.DataFrame:
    """Long l2_book rows: a snapshot, then 1-3 level changes per message, a second snapshot midway, silences."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int, str, float, float, bool]] = []
    t = T0 + 123_456
    recv = t
    mid = 30_000.0

    def snapshot() -> None:
        for i in range(1, 21):
            rows.append((t, recv, "bid", round(mid - i * 0.5, 2), float(rng.uniform(0.1, 3)), True))
            rows.append((t, recv, "ask", round(mid + i * 0.5, 2), float(rng.uniform(0.1, 3)), True))

    snapshot()
    for m in range(messages):
        t += int(rng.exponential(0.08) * SECOND) + (4 * SECOND if m % 500 == 250 else 0)  # some silent seconds
        recv += 1000
        if m == messages // 2:
            mid += 3.0
            snapshot()
            continue
        for _ in range(int(rng.integers(1, 4))):
            side = "bid" if rng.random() < 0.5 else "ask"
            offset = float(rng.integers(1, 25)) * 0.5
            price = round(mid - offset if side == "bid" else mid + offset, 2)
            size = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.1, 3))
            rows.append((t, recv, side, price, size, False))
    return pd.DataFrame(rows, columns=["ts_event", "ts_recv", "side", "price", "size", "snapshot"])


def book_samples(df: pd.DataFrame) -> pd.DataFrame:
    """Rebuild the book message by message with plain dicts; one sample per message."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    out = []
    for (ts, _recv), msg in df.groupby(["ts_event", "ts_recv"], sort=False):
        if msg["snapshot"].iloc[0]:
            book = {"bid": {}, "ask": {}}
        for side, price, size in zip(msg["side"], msg["price"], msg["size"], strict=True):
            if size == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = size
        out.append({"ts": ts, **_sample(book)})
    return pd.DataFrame(out)


def _sample(book: dict[str, dict[float, float]]) -> dict[str, float]:
    if not book["bid"] or not book["ask"]:
        return dict.fromkeys(("mid", "spread", "micro", "imb", "depth_bid", "depth_ask"), np.nan)
    bids = sorted(book["bid"].items(), reverse=True)
    asks = sorted(book["ask"].items())
    (bb, bq), (ba, aq) = bids[0], asks[0]
    mid = (bb + ba) / 2
    top_b = sum(s for _, s in bids[:TOP_LEVELS])
    top_a = sum(s for _, s in asks[:TOP_LEVELS])
    return {"mid": mid, "spread": (ba - bb) / mid * 1e4, "micro": (bb * aq + ba * bq) / (bq + aq),
            "imb": (top_b - top_a) / (top_b + top_a),
            "depth_bid": sum(s for p, s in bids if p >= mid * (1 - DEPTH_BPS / 1e4)),
            "depth_ask": sum(s for p, s in asks if p <= mid * (1 + DEPTH_BPS / 1e4))}


def pandas_book_features(samples: pd.DataFrame, width: int) -> pd.DataFrame:
    key = samples["ts"] // width * width
    full = pd.RangeIndex(int(key.min()), int(key.max()) + width, width)
    g = samples.assign(key=key).groupby("key")
    out = pd.DataFrame({"book_updates": g.size(), "mean_spread_bps": g["spread"].mean(),
                        "max_spread_bps": g["spread"].max(), "mean_imbalance": g["imb"].mean(),
                        "microprice": g["micro"].last(), "depth_bid": g["depth_bid"].last(),
                        "depth_ask": g["depth_ask"].last()}).reindex(full)
    out["book_updates"] = out["book_updates"].fillna(0)
    out[["microprice", "depth_bid", "depth_ask"]] = out[["microprice", "depth_bid", "depth_ask"]].ffill()
    out["twap_mid"] = _time_weighted_mid(samples, full, width)
    return out


def _time_weighted_mid(samples: pd.DataFrame, full: pd.RangeIndex, width: int) -> pd.Series:
    """Integrate the step function 'mid since the last message' over each slice, cut at slice bounds,
    up to the last message (the watermark at the final flush: nothing is extrapolated past it)."""
    end = samples["ts"].max()
    edges = np.union1d(samples["ts"].to_numpy(), np.arange(full[0], full[-1] + width, width))
    edges = edges[edges <= end]
    seg = pd.DataFrame({"t": edges[:-1], "dt": np.diff(edges)})
    seg = pd.merge_asof(seg, samples[["ts", "mid"]].rename(columns={"ts": "t"}), on="t", direction="backward")
    seg = seg.dropna(subset=["mid"])
    seg["key"] = seg["t"] // width * width
    agg = seg.assign(w=seg["mid"] * seg["dt"]).groupby("key")[["w", "dt"]].sum()
    return (agg["w"] / agg["dt"]).reindex(full)


def kernel_book(df: pd.DataFrame, width: int) -> np.ndarray[Any, Any]:
    engine = Engine(width, 0, TOP_LEVELS, DEPTH_BPS)
    engine.book_arrays("X", df["ts_event"].to_numpy(np.int64), df["ts_recv"].to_numpy(np.int64),
                       (df["side"] == "bid").to_numpy(np.uint8), df["price"].to_numpy(np.float64),
                       df["size"].to_numpy(np.float64), df["snapshot"].to_numpy(np.uint8))
    engine.flush()
    syms, slices = engine.take()
    assert engine.late_book_rows == 0 and set(syms) <= {0}
    return slices


BOOK_COLUMNS = ["book_updates", "mean_spread_bps", "max_spread_bps", "mean_imbalance", "microprice", "depth_bid",
                "depth_ask", "twap_mid"]


@pytest.mark.parametrize("width", [SECOND, 60 * SECOND])
def test_book_kernel_equals_pandas_including_slices_without_updates(width: int) -> None:
    df = synthetic_book(3_000, seed=5)
    slices = kernel_book(df, width)
    want = pandas_book_features(book_samples(df), width)
    assert list(slices["start"]) == list(want.index)
    assert_columns_match(values(slices), want, BOOK_COLUMNS)
    if width == SECOND:
        assert (slices["n_updates"] == 0).sum() >= 3  # silent seconds still carry a time-weighted mid


def test_merging_sixty_one_second_book_slices_gives_exactly_the_one_minute_slice() -> None:
    df = synthetic_book(6_000, seed=6)
    assert_identical(merge_runs(kernel_book(df, SECOND), 60 * SECOND), kernel_book(df, 60 * SECOND))


def test_late_trade_is_counted_not_added() -> None:
    engine = Engine(SECOND, SECOND)
    one = np.ones(1)
    assert engine.trade_arrays("X", np.array([T0 + 10 * SECOND]), one * 100, one, np.ones(1, np.uint8)) == 0
    late = engine.trade_arrays("X", np.array([T0 + 5 * SECOND]), one * 101, one, np.ones(1, np.uint8))
    assert late == 1 and engine.late_trades == 1
    engine.flush()
    _, slices = engine.take()
    assert slices["n_trades"].sum() == 1 and slices.dtype == SLICE_DTYPE


def test_parallel_batch_kernel_is_bit_identical_to_the_streaming_engine() -> None:
    df = synthetic_trades(400_000, seed=8, span_s=900)  # above MIN_ROWS_PER_THREAD: the batch kernel splits
    batch = kernel_trades(df, SECOND)
    engine = Engine(SECOND, 0)
    engine.trade_arrays("X", df["ts"].to_numpy(np.int64), df["price"].to_numpy(np.float64),
                        df["amount"].to_numpy(np.float64), df["buy"].to_numpy(np.uint8))
    engine.flush()
    assert_identical(batch, engine.take()[1])


def test_batch_kernel_rejects_unsorted_trades() -> None:
    df = synthetic_trades(100, seed=9, span_s=5)
    ts = df["ts"].to_numpy(np.int64)[::-1].copy()
    with pytest.raises(ValueError, match="sorted"):
        trade_slices(ts, df["price"].to_numpy(np.float64), df["amount"].to_numpy(np.float64),
                     df["buy"].to_numpy(np.uint8), SECOND)


@pytest.mark.parametrize("row", [1, 123_457, -10])
def test_batch_kernel_rejects_two_trades_out_of_order_anywhere_in_a_split_batch(row: int) -> None:
    """The threads check the order as they go (no pass of its own): a swap at the start, in the middle or at
    the end of a batch split between threads is still an error that names its row."""
    df = synthetic_trades(400_000, seed=15, span_s=900)
    ts = df["ts"].to_numpy(np.int64).copy()
    row %= len(ts)
    ts[row - 1], ts[row] = ts[row] + 1, ts[row - 1]
    with pytest.raises(ValueError, match=rf"sorted by event time \(row {row}\)"):
        trade_slices(ts, df["price"].to_numpy(np.float64), df["amount"].to_numpy(np.float64),
                     df["buy"].to_numpy(np.uint8), SECOND)


def test_two_and_four_lane_trade_kernels_are_bit_identical() -> None:
    """The 4-lane (AVX2) and the 2-lane vector code do the same operations per lane; jumps beyond the log
    series' range and unchanged prices take the exact path in both."""
    df = synthetic_trades(50_000, seed=16, span_s=120)
    price = df["price"].to_numpy(np.float64).copy()
    price[1_000:1_010] = price[999]  # no move: no realized-variance term
    price[5_000] *= 1.01  # beyond the series: log
    df["price"] = price
    try:
        before = _use_vector_width(4)
    except ValueError:
        pytest.skip("no AVX2 on this CPU: only the 2-lane kernel runs here")
    try:
        four = kernel_trades(df, SECOND)
        _use_vector_width(2)
        two = kernel_trades(df, SECOND)
    finally:
        _use_vector_width(before)
    assert two.tobytes() == four.tobytes()


def test_collector_rows_path_is_bit_identical_to_the_column_path() -> None:
    """Live (bus rows, float seconds) and backfill (lake columns, int64 ns) go through different entry points."""
    df = synthetic_trades(30_000, seed=10, span_s=120)
    df["ts"] = df["ts"] // 1000 * 1000  # collector times are whole microseconds
    rows = [["X", t / 1e9, t / 1e9, i, None, "buy" if b else "sell", p, q]
            for i, (t, p, q, b) in enumerate(zip(df["ts"], df["price"], df["amount"], df["buy"], strict=True))]
    live = Engine(SECOND, 0)
    live.trade_rows(rows)
    live.flush()
    assert_identical(live.take()[1], kernel_trades(df, SECOND))


# -- exchange order, whatever the arrival order -----------------------------------------------------


def collector_rows(df: pd.DataFrame, order: np.ndarray[Any, Any]) -> list[list[Any]]:
    return [["X", df["ts"].iat[i] / 1e9, df["ts"].iat[i] / 1e9, int(df["id"].iat[i]), None,
             "buy" if df["buy"].iat[i] else "sell", float(df["price"].iat[i]), float(df["amount"].iat[i])]
            for i in order]


def newest_first_messages(n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Arrival order of n trades sent as Coinbase does: messages of 1-6 trades, each listed newest first."""
    order: list[int] = []
    start = 0
    while start < n:
        size = int(rng.integers(1, 7))
        order.extend(range(min(start + size, n) - 1, start - 1, -1))
        start += size
    return np.array(order)


def test_trades_are_computed_in_exchange_order_whatever_their_arrival_order() -> None:
    """Coinbase lists a message's trades newest first: open, close and realized variance must still be those of
    (event time, trade id) order; equal event times are told apart by the id, on the rows and the columns path."""
    df = synthetic_trades(20_000, seed=11, span_s=60)
    ts = df["ts"].to_numpy(np.int64) // 1000 * 1000
    ts[1::5] = ts[0::5][: len(ts[1::5])]  # every fifth trade shares its predecessor's time
    df["ts"] = ts
    df["id"] = np.arange(len(df)) + 1_000
    want = kernel_trades(df, SECOND)  # the batch kernel, given exchange order
    rng = np.random.default_rng(12)
    for order in (newest_first_messages(len(df), rng), rng.permutation(len(df))):
        live = Engine(SECOND, 3 * 60 * SECOND)  # a permutation reaches back up to the whole minute
        for chunk in np.array_split(order, 37):  # many bus batches
            assert live.trade_rows(collector_rows(df, chunk)) == 0
        live.flush()
        assert_identical(live.take()[1], want)
        columns = Engine(SECOND, 3 * 60 * SECOND)
        picked = df.iloc[order]
        assert columns.trade_arrays("X", picked["ts"].to_numpy(np.int64), picked["price"].to_numpy(np.float64),
                                    picked["amount"].to_numpy(np.float64), picked["buy"].to_numpy(np.uint8),
                                    picked["id"].to_numpy(np.int64)) == 0
        columns.flush()
        assert_identical(columns.take()[1], want)


def test_a_symbols_first_trade_need_not_be_its_oldest() -> None:
    """The first trade seen opens slice 10; one for slice 8 (within the lateness) is not late, and slice 8 is
    emitted: a symbol's slices start at its oldest record, not its first."""
    engine = Engine(SECOND, 5 * SECOND)
    one = np.ones(1)
    assert engine.trade_arrays("X", np.array([T0 + 10 * SECOND]), one * 100, one, np.ones(1, np.uint8)) == 0
    assert engine.trade_arrays("X", np.array([T0 + 8 * SECOND + 5]), one * 99, one, np.ones(1, np.uint8)) == 0
    engine.flush()
    _, slices = engine.take()
    assert list(slices["start"]) == [T0 + 8 * SECOND, T0 + 9 * SECOND, T0 + 10 * SECOND]
    assert list(slices["n_trades"]) == [1, 0, 1] and engine.late_trades == 0


def test_a_lateness_longer_than_the_ring_grows_it_and_closes_nothing_before_the_flush() -> None:
    df = synthetic_trades(20_000, seed=13, span_s=300)  # 300 slices open at once: the ring grows past its start
    df["id"] = np.arange(len(df))
    order = np.random.default_rng(14).permutation(len(df))
    engine = Engine(SECOND, 10 * 365 * 86_400 * SECOND)
    assert engine.trade_rows(collector_rows(df.assign(ts=df["ts"] // 1000 * 1000), order)) == 0
    assert len(engine.take()[1]) == 0  # nothing closed yet
    engine.flush()
    assert_identical(engine.take()[1], kernel_trades(df.assign(ts=df["ts"] // 1000 * 1000), SECOND))


# -- provisional slices: a peek at the open slice ---------------------------------------------------------


def test_peeks_leave_every_closed_slice_bit_identical_and_a_peek_after_a_slices_last_data_is_its_close() -> None:
    """Trades newest first within messages (so a peek sorts the open slice's buffer) and book messages between
    them: an engine peeked at after every batch closes exactly what one never peeked at closes; a peek once a slice
    has all its data equals the slice it then closes, field for field."""
    df = synthetic_trades(12_000, seed=21, span_s=30)
    df["ts"] = df["ts"] // 1000 * 1000
    df["id"] = np.arange(len(df)) + 1
    order = newest_first_messages(len(df), np.random.default_rng(22))
    book = synthetic_book(300, seed=23)
    book_rows = [["X", e / 1e9, r / 1e9, s, p, q, bool(snap), 0] for e, r, s, p, q, snap in
                 zip(book["ts_event"], book["ts_recv"], book["side"], book["price"], book["size"], book["snapshot"],
                     strict=True)]
    plain, peeked = (Engine(SECOND, SECOND, TOP_LEVELS, DEPTH_BPS) for _ in range(2))
    seen_open, fed = 0, 0
    for chunk in np.array_split(order, 200):
        rows = collector_rows(df, chunk)
        newest = max(r[1] for r in rows)
        upto = fed
        while upto < len(book_rows) and book_rows[upto][1] <= newest:  # whole messages: rows of one share a time
            upto += 1
        for engine in (plain, peeked):
            engine.trade_rows(rows)
            engine.book_rows(book_rows[fed:upto])
        fed = upto
        syms, open_now = peeked.peek()
        seen_open += len(open_now)
        assert (syms == 0).all() and (open_now["start"] == peeked.watermark // SECOND * SECOND).all()
    for engine in (plain, peeked):
        engine.flush()
    assert seen_open >= 150 and fed > 100 and peeked.late_trades == plain.late_trades < 20
    closed = peeked.take()[1]
    assert (closed["n_updates"] > 0).sum() >= 10 and (closed["n_trades"] > 0).sum() >= 20
    assert_identical(closed, plain.take()[1])

    engine = Engine(SECOND, 0, TOP_LEVELS, DEPTH_BPS)
    second = df[(df["ts"] >= T0 + SECOND) & (df["ts"] < T0 + 2 * SECOND)]
    assert len(second) > 10
    engine.trade_rows(collector_rows(second, np.arange(len(second))[::-1]))  # newest first: an unsorted buffer
    _, before = engine.peek()
    engine.trade_rows([["X", (T0 + 2 * SECOND) / 1e9 + 0.5, 0.0, None, None, "buy", 1.0, 1.0]])  # closes it
    _, closed = engine.take()
    assert len(before) == 1 and before["start"][0] == T0 + SECOND and before["n_trades"][0] == len(second)
    assert closed.tobytes() == before.tobytes()  # the peek was exactly the slice it closed as


def test_peek_of_an_engine_with_nothing_open_is_empty() -> None:
    engine = Engine(SECOND, 0)
    syms, slices = engine.peek()
    assert len(syms) == 0 and len(slices) == 0 and slices.dtype == SLICE_DTYPE
