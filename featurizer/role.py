"""Featurizer role: bus market data -> event-time slices -> features on the bus and in Redis.

Data flow: SUB ``trades.*``, ``l2_book.*`` and ``gaps.*`` on the bus -> one ``ExchangeFeaturizer``
per exchange -> each closed slice is published as ``features.{interval}.{exchange}.{symbol}``
and appended to the Redis stream ``df:stream:{exchange}:features`` (``featurizer.sink``: explicit
ids, spill, never trimmed), which the aggregator lands in the lake's ``features`` table.

A slice is never presented as whole when it is not: its ``complete`` column is False when
- the featurizer started inside it: at start, once subscribed, it reads each symbol's newest
  exchange time already cached (the collectors' marks); slices up to that one may miss records;
- it had no book to apply deltas to: after a restart it asks the collectors for a full snapshot
  of every book (``cache.BOOK_SNAPSHOT_REQUEST_KEY``) and slices up to the snapshot's are incomplete;
- bus batches of its symbol were lost while it was open, or a collector's gaps row (on the bus
  before the data that ends it) says records of its time are missing; an outage the collector
  announced open (``collector.gaps.open_notice``: a restart, a reconnect, a stall) holds every slice
  from its start incomplete until the row that ends it arrives, whatever other symbols' data do;
- a stop closed it before the watermark passed it.
A feature key already in the cache (an earlier run closed it at its stop) is not emitted again.

Stop (SIGTERM, sent after the collectors have stopped): read the bus until it is quiet, close
every open slice, publish and write them, exit. ``featurizer backfill --incomplete`` recomputes
the incomplete slices from the lake.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import redis

from data_feed.bus.wire import (
    CONFIRMED,
    Publisher,
    Subscriber,
    channel_prefix,
    decode_rows,
    encode_rows,
    endpoints,
    features_topic,
    parse_market_topic,
    provisional_topic,
)
from data_feed.cache.spill import Spill
from data_feed.cache.streams import BOOK_SNAPSHOT_REQUEST_KEY, Mark, collector_state_key, parse_mark_field
from data_feed.contracts.config import GAPS_CHANNEL, Config
from data_feed.contracts.schemas import NS_PER_SECOND, OPEN_NOTICE, Channel, GapReason, batch_columns
from data_feed.observability import metrics
from data_feed.observability.status import RoleStatus
from featurizer.engine import Closed, ExchangeFeaturizer
from featurizer.features import Slices, interval_ns, overlaps, rows
from featurizer.hold import Held, Hold
from featurizer.sink import FeatureSink

LOG = logging.getLogger("featurizer")

INPUT_CHANNELS = (Channel.TRADES, Channel.L2_BOOK)
BOOK_SNAPSHOT_COLUMN = 6  # of an l2_book row: (symbol, ts_event, ts_recv, side, price, size, snapshot, sequence)
RECV_TIMEOUT_MS = 100
MAX_BATCHES_PER_STEP = 500  # then publish what closed, so output never waits on a busy input
DRAIN_QUIET_MS = 500  # at stop: the bus counts as drained after this long without a batch
REDIS_RETRY_SECONDS = 1.0
SUBSCRIBE_SETTLE_SECONDS = 0.3  # a subscription takes a moment to reach the proxy; marks are read after it
BYTES_PER_MB = 1024 * 1024
UNSEEN = -1  # complete_from of a symbol the featurizer saw from its first record
GAP_COLUMNS = batch_columns(GAPS_CHANNEL)
GAP_FROM_COLUMN, GAP_TO_COLUMN = GAP_COLUMNS.index("missing_from_ts"), GAP_COLUMNS.index("missing_to_ts")
GAP_REASON_COLUMN = GAP_COLUMNS.index("reason")
GAP_DETAIL_COLUMN = GAP_COLUMNS.index("detail")
OPEN_END = 2**63 - 1  # the end of an outage still open: every later slice touches it
RECV_COLUMN = batch_columns(Channel.TRADES).index("ts_recv")  # of trades and l2_book rows alike
MAX_WINDOWS_PER_SYMBOL = 1000  # the newest kept: older ones lie before every slice still open


class Featurizer:
    def __init__(self, cfg: Config, client: redis.Redis) -> None:
        self.cfg = cfg
        self.client = client
        publish, subscribe = endpoints(cfg)
        self.hold = cfg.bus.publish_on_receipt  # publish at once, land once confirmed (``featurizer.hold``)
        inputs = (*INPUT_CHANNELS, GAPS_CHANNEL, *((CONFIRMED,) if self.hold else ()))
        self.subscriber = Subscriber(subscribe, [channel_prefix(ch) for ch in inputs], cfg.bus.high_water_mark)
        self.subscriber.on_loss = self._bus_loss
        self.publisher = Publisher(publish, cfg.bus.high_water_mark)
        self.exchanges = {ex: ExchangeFeaturizer(ex, cfg.featurizer) for ex in cfg.exchanges}
        spill = Spill(cfg.spill_root() / "featurizer", cfg.redis.spill_max_mb * BYTES_PER_MB)
        self.sink = FeatureSink(client, list(cfg.exchanges), cfg.redis, spill)
        self.complete_from: dict[tuple[str, str], int] = {}  # slices starting before this are incomplete (ns)
        self.awaiting_book: set[tuple[str, str]] = set()  # symbols whose book needs a snapshot first
        self.tainted: set[tuple[str, str]] = set()  # symbols whose bus batches were lost just now
        self.windows: dict[tuple[str, str], list[tuple[int, int]]] = {}  # exchange time with data missing (ns)
        # (exchange, symbol, channel) -> start (ns) of an outage a collector announced open (gaps.open_notice)
        self.open_windows: dict[tuple[str, str, str], int] = {}
        self.stopping = False
        self.prepared = False
        self.bad_batches = 0
        self.suppressed = 0  # slices not emitted: their key is already in the cache
        self.records_in = 0  # market-data records taken from the bus
        self.newest_recv: dict[str, float] = {}  # per exchange: receive time of the newest record read
        self.provisional_s = cfg.featurizer.provisional_ms / 1000
        self.received_max: dict[str, float] = {}  # per exchange: the newest receive time of any record read
        self.holding = Hold(cfg.exchanges, cfg.redis.batch_max_ms, self._land)
        self._provisional_due = 0.0
        self._provisional_sent: dict[tuple[str, str], tuple[int, int, int]] = {}  # what each symbol's last showed

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, status: RoleStatus | None = None) -> None:
        time.sleep(SUBSCRIBE_SETTLE_SECONDS)
        while not self.prepare() and not self.stopping:
            time.sleep(REDIS_RETRY_SECONDS)
        if status is not None:
            status.ready()  # subscribed: the spawner starts the collectors once it says so
        while not self.stopping:
            self.step(RECV_TIMEOUT_MS)
        self.drain()

    def prepare(self) -> bool:
        """Once subscribed: entry ids, what is already cached, and where this featurizer's view begins."""
        if self.prepared:
            return True
        try:
            self.sink.prepare()
            self._mark_unseen()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
            LOG.error("Redis unreachable at start (%s); retrying in %.0fs", err, REDIS_RETRY_SECONDS)
            return False
        self.prepared = True
        return True

    def _mark_unseen(self) -> None:
        """Slices up to each symbol's newest cached record may miss records this featurizer never saw."""
        pipe = self.client.pipeline(transaction=False)
        for ex in self.exchanges:
            pipe.hgetall(collector_state_key(ex))
        asked = False
        for ex, state in zip(self.exchanges, pipe.execute(), strict=True):
            base = self.exchanges[ex].base_ns
            for field, value in state.items():
                parsed = parse_mark_field(field.decode())
                if parsed is None or parsed[0] not in INPUT_CHANNELS:
                    continue
                newest = round(Mark.unpack(value.decode()).ts_event * NS_PER_SECOND)
                self._incomplete_until(ex, parsed[1], newest - newest % base + base)
                if parsed[0] == Channel.L2_BOOK:
                    self.awaiting_book.add((ex, parsed[1]))
                    asked = True
        if asked:  # collectors answer with a full snapshot of each book they keep
            self.client.set(BOOK_SNAPSHOT_REQUEST_KEY, repr(time.time()))
            LOG.info("asked the collectors for a book snapshot (%d books to rebuild)", len(self.awaiting_book))

    def _incomplete_until(self, exchange: str, symbol: str, start_ns: int) -> None:
        key = (exchange, symbol)
        self.complete_from[key] = max(self.complete_from.get(key, UNSEEN), start_ns)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        LOG.info("stop requested (signal %s): draining the bus, then closing every open slice", signum)
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def drain(self) -> None:
        while self.step(DRAIN_QUIET_MS):
            pass
        for ex, fx in self.exchanges.items():
            self.emit(ex, fx.flush())
        self.holding.release_unconfirmed(everything=True)  # the collectors stopped first: their last flush said all
        deadline = time.monotonic() + self.cfg.spawner.stop_timeout_seconds / 2
        while self.sink.pending and time.monotonic() < deadline:
            self.sink.write()
            if self.sink.pending:
                time.sleep(REDIS_RETRY_SECONDS)
        if self.sink.pending:
            LOG.error("%d feature batches could not be written to Redis at stop; they stay in the spill %s for the "
                      "next start", self.sink.pending, self.sink.spill.root)
        self.publisher.close()
        self.subscriber.close()

    # -- the loop ----------------------------------------------------------------------------

    def step(self, timeout_ms: int) -> int:
        """Read up to MAX_BATCHES_PER_STEP batches (waiting up to timeout_ms for the first), emit what closed."""
        if not self.prepare():
            time.sleep(timeout_ms / 1000)
            return 0
        n = 0
        msg = self.subscriber.recv(timeout_ms)
        while msg is not None:
            fx = self.ingest(*msg)
            n += 1
            if n >= MAX_BATCHES_PER_STEP or (fx is not None and fx.has_closed):
                break  # a slice closed: publish it now, not after the rest of a burst
            msg = self.subscriber.recv(0)
        for ex, fx in self.exchanges.items():
            self.emit(ex, fx.closed(), live=True)
        if self.hold:
            self.holding.release_unconfirmed()  # what its confirmation already covers, and what waited too long
        if self.provisional_s and time.monotonic() >= self._provisional_due:
            self._provisional_due = time.monotonic() + self.provisional_s
            for ex, fx in self.exchanges.items():
                self.publish_provisional(ex, fx.provisional())
        self.sink.write()
        return n

    @property
    def pending(self) -> int:
        return self.sink.pending

    def ingest(self, topic: bytes, payload: bytes) -> ExchangeFeaturizer | None:
        """One bus batch into its exchange's engine; that exchange's featurizer when it took market rows."""
        try:
            channel, exchange, symbol = parse_market_topic(topic)
        except (ValueError, UnicodeDecodeError) as err:
            self._bad(topic.decode(errors="replace"), err)
            return None
        fx = self.exchanges.get(exchange)
        control = {GAPS_CHANNEL: self._gaps, CONFIRMED: self._confirmed}.get(channel)
        if control is not None and fx is not None:
            control(exchange, payload)
            return None
        if channel not in INPUT_CHANNELS:
            LOG.error("exchange=%s channel=%s symbol=%s: not a featurizer input channel; ignored", exchange, channel,
                      symbol)
            return None
        if fx is None:
            LOG.error("exchange=%s channel=%s symbol=%s: batch for an exchange not in the config; ignored",
                      exchange, channel, symbol)
            return None
        try:
            data = decode_rows(payload)
            self.records_in += len(data)
            self._note_received(exchange, data)
            late = fx.trade_rows(data) if channel == Channel.TRADES else fx.book_rows(data)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as err:
            self._bad(topic.decode(), err)
            return None
        if channel == Channel.L2_BOOK and (exchange, symbol) in self.awaiting_book:
            self._book_seeded(exchange, symbol, data)
        if (exchange, symbol) in self.tainted:
            self.tainted.discard((exchange, symbol))
            self._incomplete_until(exchange, symbol, fx.open_until_ns())
        if late:
            metrics.FEATURE_LATE_RECORDS.labels(exchange, channel).inc(late)
            LOG.warning("exchange=%s channel=%s symbol=%s: %d records arrived after their slice closed (watermark "
                        "passed by more than featurizer.allowed_lateness_seconds); counted, not in any slice",
                        exchange, channel, symbol, late)
        return fx

    def _note_received(self, exchange: str, data: list[list[object]]) -> None:
        if data:  # rows of a batch are in receive order
            self.newest_recv[exchange] = recv = float(data[-1][RECV_COLUMN])  # type: ignore[arg-type]
            self.received_max[exchange] = max(recv, self.received_max.get(exchange, recv))

    def _book_seeded(self, exchange: str, symbol: str, data: list[list[object]]) -> None:
        snapshots = [row for row in data if row[BOOK_SNAPSHOT_COLUMN]]
        if not snapshots:
            return
        self.awaiting_book.discard((exchange, symbol))
        seen = round(float(snapshots[-1][1]) * NS_PER_SECOND)  # type: ignore[arg-type]
        base = self.exchanges[exchange].base_ns
        self._incomplete_until(exchange, symbol, seen - seen % base + base)
        LOG.info("exchange=%s channel=l2_book symbol=%s: book rebuilt from a snapshot", exchange, symbol)

    def _gaps(self, exchange: str, payload: bytes) -> None:
        """A collector's gaps rows: slices overlapping the time without data are not whole; a book that lost
        updates is wrong until its next snapshot."""
        try:
            gap_rows = decode_rows(payload)
        except (ValueError, msgpack.UnpackException) as err:
            self._bad(f"gaps.{exchange}", err)
            return
        for row in gap_rows:
            symbol, channel, reason = row[0], row[3], row[GAP_REASON_COLUMN]
            if channel not in INPUT_CHANNELS or reason == GapReason.STOPPED:  # a stop: the flush marks the rest
                continue
            if str(row[GAP_DETAIL_COLUMN]).startswith(OPEN_NOTICE):  # open: incomplete from its start, until closed
                start = row[GAP_FROM_COLUMN]
                opened = int(start) if start is not None else gap_window(row)[0]
                key3 = (exchange, symbol, channel)
                self.open_windows[key3] = min(opened, self.open_windows.get(key3, opened))
                continue
            self.open_windows.pop((exchange, symbol, channel), None)  # the row that ends it
            windows = self.windows.setdefault((exchange, symbol), [])
            windows.append(gap_window(row))
            del windows[:-MAX_WINDOWS_PER_SYMBOL]
            if channel == Channel.L2_BOOK and row[GAP_FROM_COLUMN] is None:  # lost updates: wrong until a resync
                self.awaiting_book.add((exchange, symbol))

    def _bus_loss(self, topic: bytes, lost: int) -> None:
        """Lost batches of a symbol, seen as the batch after them arrives: once that batch is in, every slice
        of the symbol up to the newest one open may miss records."""
        try:
            channel, exchange, symbol = parse_market_topic(topic)
        except ValueError:
            return
        self.tainted.add((exchange, symbol))
        if channel == GAPS_CHANNEL:  # the row ending an open outage may be among them: taint instead of waiting
            for key in [k for k in self.open_windows if k[:2] == (exchange, symbol)]:
                del self.open_windows[key]
        if channel == Channel.L2_BOOK:  # the book missed updates: wrong until a full snapshot
            self.awaiting_book.add((exchange, symbol))
            self.client.set(BOOK_SNAPSHOT_REQUEST_KEY, repr(time.time()))

    def _bad(self, topic: str, err: Exception) -> None:
        self.bad_batches += 1
        LOG.error("topic=%s: bad bus batch skipped (%s: %s); %d so far", topic, type(err).__name__, err,
                  self.bad_batches)

    # -- output ------------------------------------------------------------------------------

    def emit(self, exchange: str, closed: list[Closed], live: bool = False) -> None:
        """Publish and cache ``closed``; ``live``: closed by the input's watermark (not a stop's flush), so the
        frame-to-feature latency is measured."""
        now = time.time()
        for batch in closed:
            keep = self._not_yet_emitted(exchange, batch)
            slices: Slices = batch.slices[keep]
            if len(slices) == 0:
                continue
            kept = replace(batch, slices=slices, complete=np.broadcast_to(batch.complete, keep.shape)[keep])
            out = rows(batch.symbol, batch.interval, slices, now, self._complete(exchange, kept))
            self.publisher.publish(features_topic(batch.interval, exchange, batch.symbol), encode_rows(out))
            if self.hold:
                self.holding.add(exchange, self.received_max.get(exchange, 0.0), now, kept)
            else:
                self.sink.add(exchange, out)
            metrics.FEATURE_SLICES.labels(exchange, batch.interval).inc(len(out))
            end_ns = int(slices["start"][-1]) + interval_ns(batch.interval)
            metrics.FEATURE_LATENCY.labels(exchange).set(now - end_ns / NS_PER_SECOND)
            if live and exchange in self.newest_recv:
                metrics.FEATURE_FRAME_LATENCY.labels(exchange, batch.interval).observe(
                    max(0.0, time.time() - self.newest_recv[exchange]))

    def _confirmed(self, exchange: str, payload: bytes) -> None:
        """A collector's rows received up to a time are cached: land the slices built from rows up to it."""
        try:
            up_to = float(decode_rows(payload)[0][0])  # type: ignore[arg-type]
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as err:
            self._bad(f"{CONFIRMED}.{exchange}", err)
            return
        self.holding.confirm(exchange, up_to)

    def _land(self, exchange: str, held: Held, confirmed: bool) -> None:
        """Into the cache (and so the lake), ``complete`` decided now: a gap announced since the slice was
        published makes it incomplete, as backfill sees it, and so does a confirmation that never came."""
        batch = held.batch
        complete = self._complete(exchange, batch) & confirmed
        if not confirmed:
            LOG.warning("exchange=%s symbol=%s interval=%s: %d slices published %.1fs ago were never confirmed "
                        "cached by the collector; landed as incomplete", exchange, batch.symbol, batch.interval,
                        len(batch.slices), time.time() - held.closed_at)
        self.sink.add(exchange, rows(batch.symbol, batch.interval, batch.slices, held.closed_at, complete))

    def publish_provisional(self, exchange: str, batches: list[Closed]) -> None:
        """Open slices that changed since their last update, on the bus only (``provisional_topic``): a consumer
        sees the slice build up; the final one follows on the features topic when it closes, and only that one
        is cached and landed."""
        now = time.time()
        for batch in batches:
            head = batch.slices[0]
            state = (int(head["start"]), int(head["n_trades"]), int(head["n_updates"]))
            if self._provisional_sent.get((exchange, batch.symbol)) == state:
                continue
            self._provisional_sent[(exchange, batch.symbol)] = state
            out = rows(batch.symbol, batch.interval, batch.slices, now, np.zeros(len(batch.slices), dtype=bool))
            self.publisher.publish(provisional_topic(batch.interval, exchange, batch.symbol), encode_rows(out))
            metrics.FEATURE_PROVISIONAL.labels(exchange, batch.interval).inc()

    def _not_yet_emitted(self, exchange: str, batch: Closed) -> npt.NDArray[np.bool_]:
        """Which slices of ``batch`` are not already in the cache (an earlier run stopped inside them)."""
        keep = np.array([not self.sink.already_emitted(exchange, batch.symbol, batch.interval, int(start))
                         for start in batch.slices["start"]], dtype=bool)
        if not keep.all():
            self.suppressed += int((~keep).sum())
            LOG.warning("exchange=%s symbol=%s interval=%s: %d slices already in the cache from an earlier run (it "
                        "stopped inside them, so they are marked incomplete); not emitted again", exchange,
                        batch.symbol, batch.interval, int((~keep).sum()))
        return keep

    def _complete(self, exchange: str, batch: Closed) -> npt.NDArray[np.bool_]:
        """Per slice of ``batch``: seen whole (see the module docstring)."""
        key = (exchange, batch.symbol)
        starts = batch.slices["start"].astype(np.int64)
        if key in self.awaiting_book:
            return np.zeros(len(starts), dtype=bool)
        complete = np.broadcast_to(np.asarray(batch.complete), starts.shape) & (
            starts >= self.complete_from.get(key, UNSEEN))
        windows = [*self.windows.get(key, []), *((lo, OPEN_END) for (ex, sym, _), lo in self.open_windows.items()
                                                 if (ex, sym) == key)]
        return complete & ~overlaps(starts, interval_ns(batch.interval), windows)


def gap_window(row: Sequence[Any]) -> tuple[int, int]:
    """[from, to] exchange time (ns) of a gaps row without data; its detection instant when unknown."""
    detected_ns = round(float(row[1]) * NS_PER_SECOND)
    start, end = row[GAP_FROM_COLUMN], row[GAP_TO_COLUMN]
    return (detected_ns if start is None else int(start), detected_ns if end is None else int(end))


def run(cfg: Config, status: RoleStatus | None = None) -> None:
    assert cfg.redis.url, "the featurizer needs redis.url"
    fz = Featurizer(cfg, redis.Redis.from_url(cfg.redis.url))
    fz.install_signal_handlers()
    LOG.info("featurizing %s at %s", ", ".join(cfg.exchanges), ", ".join(cfg.featurizer.intervals))
    fz.run(status)
    LOG.info("stopped; late trades %s, late book rows %s",
             {ex: fx.late_trades for ex, fx in fz.exchanges.items()},
             {ex: fx.late_book_rows for ex, fx in fz.exchanges.items()})
