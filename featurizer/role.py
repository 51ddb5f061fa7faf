"""Featurizer role: bus market data -> event-time slices -> features on the bus and in Redis.

Data flow: SUB ``trades.*`` and ``l2_book.*`` on the spawner's bus -> one ``ExchangeFeaturizer``
per exchange -> each closed slice is published as ``features.{interval}.{exchange}.{symbol}``
and appended to the Redis stream ``df:stream:{exchange}:features``, which the aggregator lands
in the lake's ``features`` table like any channel.

Stop (SIGTERM, sent after the collectors have stopped): read the bus until it is quiet, close
every open slice, publish and write them, exit. Open slices live in memory only: a featurizer
restarted by the spawner starts its slices afresh (the lake still has every record, and
``featurizer backfill`` recomputes any period from it).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType

import msgpack
import redis

from data_feed import metrics
from data_feed.bus import (
    Publisher,
    Subscriber,
    channel_prefix,
    decode_rows,
    encode_rows,
    endpoints,
    features_topic,
    parse_market_topic,
)
from data_feed.cache import encode_batch, stream_key
from data_feed.config import FEATURES_CHANNEL, Config
from featurizer.engine import Closed, ExchangeFeaturizer
from featurizer.features import interval_ns, rows

LOG = logging.getLogger("featurizer")

INPUT_CHANNELS = ("trades", "l2_book")
RECV_TIMEOUT_MS = 100
MAX_BATCHES_PER_STEP = 500  # then publish what closed, so output never waits on a busy input
DRAIN_QUIET_MS = 500  # at stop: the bus counts as drained after this long without a batch
REDIS_RETRY_SECONDS = 1.0
MAX_PENDING_BATCHES = 100_000  # feature batches kept while Redis is unreachable
READY_FILE = "featurizer.ready"  # in spawner.run_dir, once subscribed
NS_PER_SECOND = 1_000_000_000


class Featurizer:
    def __init__(self, cfg: Config, client: redis.Redis) -> None:
        self.cfg = cfg
        self.client = client
        publish, subscribe = endpoints(cfg)
        self.subscriber = Subscriber(subscribe, [channel_prefix(ch) for ch in INPUT_CHANNELS],
                                     cfg.bus.high_water_mark)
        self.publisher = Publisher(publish, cfg.bus.high_water_mark)
        self.exchanges = {ex: ExchangeFeaturizer(ex, cfg.featurizer) for ex in cfg.exchanges}
        self.pending: list[tuple[str, list[tuple[object, ...]]]] = []  # (exchange, rows) not yet in Redis
        self.stopping = False
        self.bad_batches = 0
        self.records_in = 0  # market-data records taken from the bus
        self._last_redis_error = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, ready_file: Path | None = None) -> None:
        if ready_file is not None:
            ready_file.write_text("subscribed\n")
        while not self.stopping:
            self.step(RECV_TIMEOUT_MS)
        self.drain()

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
        deadline = time.monotonic() + self.cfg.spawner.stop_timeout_seconds / 2
        while self.pending and time.monotonic() < deadline:
            self._write_pending()
            if self.pending:
                time.sleep(REDIS_RETRY_SECONDS)
        if self.pending:
            LOG.error("%d feature batches could not be written to Redis at stop", len(self.pending))
        self.publisher.close()
        self.subscriber.close()

    # -- the loop ----------------------------------------------------------------------------

    def step(self, timeout_ms: int) -> int:
        """Read up to MAX_BATCHES_PER_STEP batches (waiting up to timeout_ms for the first), emit what closed."""
        n = 0
        msg = self.subscriber.recv(timeout_ms)
        while msg is not None:
            self.ingest(*msg)
            n += 1
            if n >= MAX_BATCHES_PER_STEP:
                break
            msg = self.subscriber.recv(0)
        for ex, fx in self.exchanges.items():
            self.emit(ex, fx.closed())
        if self.pending:
            self._write_pending()
        return n

    def ingest(self, topic: bytes, payload: bytes) -> None:
        try:
            channel, exchange, symbol = parse_market_topic(topic)
        except (ValueError, UnicodeDecodeError) as err:
            self._bad(topic.decode(errors="replace"), err)
            return
        fx = self.exchanges.get(exchange)
        if channel not in INPUT_CHANNELS:
            LOG.error("exchange=%s channel=%s symbol=%s: not a featurizer input channel; ignored", exchange, channel,
                      symbol)
            return
        if fx is None:
            LOG.error("exchange=%s channel=%s symbol=%s: batch for an exchange not in the config; ignored",
                      exchange, channel, symbol)
            return
        try:
            data = decode_rows(payload)
            self.records_in += len(data)
            late = fx.trade_rows(data) if channel == "trades" else fx.book_rows(data)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as err:
            self._bad(topic.decode(), err)
            return
        if late:
            metrics.FEATURE_LATE_RECORDS.labels(exchange, channel).inc(late)
            LOG.warning("exchange=%s channel=%s symbol=%s: %d records arrived after their slice closed (watermark "
                        "passed by more than featurizer.allowed_lateness_seconds); counted, not in any slice",
                        exchange, channel, symbol, late)

    def _bad(self, topic: str, err: Exception) -> None:
        self.bad_batches += 1
        LOG.error("topic=%s: bad bus batch skipped (%s: %s); %d so far", topic, type(err).__name__, err,
                  self.bad_batches)

    # -- output ------------------------------------------------------------------------------

    def emit(self, exchange: str, closed: list[Closed]) -> None:
        now = time.time()
        for batch in closed:
            out = rows(batch.symbol, batch.interval, batch.slices, now)
            self.publisher.publish(features_topic(batch.interval, exchange, batch.symbol), encode_rows(out))
            self._keep_for_redis(exchange, out)
            metrics.FEATURE_SLICES.labels(exchange, batch.interval).inc(len(out))
            end_ns = int(batch.slices["start"][-1]) + interval_ns(batch.interval)
            metrics.FEATURE_LATENCY.labels(exchange).set(now - end_ns / NS_PER_SECOND)

    def _keep_for_redis(self, exchange: str, out: list[tuple[object, ...]]) -> None:
        self.pending.append((exchange, out))
        if len(self.pending) > MAX_PENDING_BATCHES:  # Redis has been down for long: bound the memory, say so
            lost_exchange, lost = self.pending.pop(0)
            LOG.error("exchange=%s: Redis unreachable for %d feature batches; dropped the oldest (%d slices) from "
                      "the lake path (they were published on the bus; featurizer backfill recomputes them)",
                      lost_exchange, MAX_PENDING_BATCHES, len(lost))

    def _write_pending(self) -> None:
        if time.monotonic() - self._last_redis_error < REDIS_RETRY_SECONDS:
            return  # Redis failed just now: do not stall the bus on every step
        pipe = self.client.pipeline(transaction=False)
        for exchange, out in self.pending:
            pipe.xadd(stream_key(exchange, FEATURES_CHANNEL), encode_batch(FEATURES_CHANNEL, out),  # type: ignore[arg-type]
                      maxlen=self.cfg.redis.stream_maxlen, approximate=True)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as err:
            LOG.error("Redis write of %d feature batches failed (%s); keeping them, retrying in %.0fs",
                      len(self.pending), err, REDIS_RETRY_SECONDS)
            self._last_redis_error = time.monotonic()
            return
        self.pending.clear()


def run(cfg: Config, redis_url: str) -> None:
    fz = Featurizer(cfg, redis.Redis.from_url(redis_url))
    fz.install_signal_handlers()
    LOG.info("featurizing %s at %s", ", ".join(cfg.exchanges), ", ".join(cfg.featurizer.intervals))
    fz.run(Path(cfg.spawner.run_dir) / READY_FILE)
    LOG.info("stopped; late trades %s, late book rows %s",
             {ex: fx.late_trades for ex, fx in fz.exchanges.items()},
             {ex: fx.late_book_rows for ex, fx in fz.exchanges.items()})
