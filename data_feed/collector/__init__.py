"""Collector role: one OS process per exchange running a cryptofeed FeedHandler.

Data flow: exchange websocket -> cryptofeed parse -> StreamWriter buffers ->
Redis streams. SIGINT/SIGTERM make cryptofeed stop its connections (no new
input) and call the writer's ``stop()``, which flushes what was accepted.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from cryptofeed import FeedHandler
from cryptofeed.connection import Connection

from data_feed.bus.wire import Publisher, endpoints
from data_feed.cache.spill import Spill
from data_feed.collector.callbacks import CRYPTOFEED_CHANNEL
from data_feed.collector.exchanges import Endpoints, feed_class, feed_config
from data_feed.collector.recorder import SessionRecorder
from data_feed.collector.writer import BYTES_PER_MB, StreamWriter
from data_feed.contracts.config import Config, ExchangeConfig
from data_feed.observability.status import RoleStatus

LOG = logging.getLogger("data_feed.collector")

WATCHDOG_CHECKS_PER_TIMEOUT = 5  # cryptofeed's watchdog looks this often per exchanges.<ID>.watchdog_seconds


def subscription(ex: ExchangeConfig) -> dict[str, list[str]]:
    return {CRYPTOFEED_CHANNEL[name]: list(ch.symbols) for name, ch in ex.channels().items()}


def build_feed(exchange: str, cfg: Config, writer: StreamWriter) -> object:
    ex = cfg.exchanges[exchange]
    sim = None
    if ex.source in ("simulator", "replay"):
        if not cfg.simulator.port:
            raise ValueError(f"exchange={exchange}: source is {ex.source} but simulator.port is 0: run the collector "
                             "under the spawner, or give the simulator a fixed port")
        sim = Endpoints(*cfg.simulator_urls())
    cls = feed_class(exchange, sim, ex.source)
    sub = subscription(ex)
    callbacks = {chan: cb for chan, cb in writer.callbacks().items() if chan in sub}
    max_depth = ex.l2_book.max_depth if ex.l2_book else 0
    feed = cls(subscription=sub, callbacks=callbacks, max_depth=max_depth, timeout=ex.watchdog_seconds,
               timeout_interval=ex.watchdog_seconds / WATCHDOG_CHECKS_PER_TIMEOUT, retries=-1,
               candle_closed_only=False, config={"log": {"disabled": True}, **feed_config(exchange, sim)})
    writer.feed = feed
    feed.gap_writer = writer  # disconnects, sequence gaps, resyncs and bad frames become gaps rows
    if writer.live is not None:  # bus.publish_on_receipt: no per-frame call otherwise
        feed.after_frame = writer.live.frame_done
    return feed


def start_recording(exchange: str, ex: ExchangeConfig) -> SessionRecorder | None:
    """With ``record`` set, every connection's raw traffic also goes to a session file (cryptofeed's hook)."""
    if ex.record is None:
        return None
    recorder = SessionRecorder(ex.record, exchange, subscription(ex))
    Connection.raw_data_callback = recorder
    return recorder


def run(exchange: str, cfg: Config, status: RoleStatus | None = None) -> None:
    """Run until SIGINT/SIGTERM; returns after the final flush."""
    ex = cfg.exchanges[exchange]
    assert cfg.redis.url, "a collector needs redis.url"
    client = aioredis.Redis.from_url(cfg.redis.url)
    spill = Spill(cfg.spill_root() / f"collector-{exchange}", cfg.redis.spill_max_mb * BYTES_PER_MB)
    channels = {name: ch.symbols for name, ch in ex.channels().items()}
    writer = StreamWriter(client, exchange, cfg.redis, spill, channels)
    writer.answers_snapshot_requests = ex.source != "replay"
    writer.bus = Publisher(endpoints(cfg)[0], cfg.bus.high_water_mark) if cfg.bus.enabled else None
    if writer.bus is not None and cfg.bus.publish_on_receipt:
        writer.publish_on_receipt()
    fh = FeedHandler(config={"log": {"disabled": True}, "uvloop": False})
    recorder = start_recording(exchange, ex)  # before the feed exists: it fetches symbols when built
    fh.add_feed(build_feed(exchange, cfg, writer))
    LOG.info("exchange=%s: collecting %s", exchange, subscription(ex))
    if status is not None:
        status.ready()
    try:
        fh.run(start_loop=True, install_signal_handlers=True)
    finally:
        if recorder is not None:
            recorder.close()
        if writer.bus is not None:
            writer.bus.close()
    LOG.info("exchange=%s: stopped; %d frames received, records cached %s", exchange, writer.frames_received,
             writer.records_cached)
    if writer.failed is not None:
        raise CollectorFailed(f"exchange={exchange}: {type(writer.failed).__name__}: {writer.failed}")


class CollectorFailed(RuntimeError):
    """The collector stopped because its writer failed; the process exits non-zero to be restarted."""
