"""Aggregator role: Redis streams -> time slices -> parquet files in the lake.

Reads every configured stream through one consumer group, cuts records into
slices by exchange time, writes a slice once the exchange's watermark (the
newest event time seen) passes its end plus the allowed lateness, and only then
acknowledges the stream entries whose records are all on disk. On restart it
first re-reads its own unacknowledged entries, so a crash loses nothing; file
names are deterministic, so a redone slice replaces its earlier file.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from data_feed import metrics
from data_feed.cache import (
    AGGREGATOR_WRITTEN_KEY,
    CONSUMER_GROUP,
    DEAD_LETTER_MAXLEN,
    BadEntry,
    dead_letter_key,
    decode_batch,
    parse_stream_key,
    stream_key,
    stream_lag,
)
from data_feed.config import Config
from data_feed.lake import NS_PER_SECOND, SliceKey, write_slice
from data_feed.schemas import SYMBOL_COLUMN

LOG = logging.getLogger("data_feed.aggregator")

CONSUMER_NAME = "aggregator-1"
READ_COUNT = 200  # entries per stream per XREADGROUP
READ_BLOCK_MS = 200
LAG_REPORT_INTERVAL_SECONDS = 5.0
WRITTEN_MEMORY_SECONDS = 86_400  # remember written slices this long to count late records


@dataclass
class OpenSlice:
    first_entry_id: str
    parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0


class Aggregator:
    def __init__(self, cfg: Config, client: redis.Redis, lake_root: Path | None = None) -> None:
        self.cfg = cfg
        self.client = client
        self.root = Path(lake_root or cfg.lake.root)
        self.width_ns = cfg.lake.slice_seconds * NS_PER_SECOND
        self.lateness_ns = int(cfg.lake.allowed_lateness_seconds * NS_PER_SECOND)
        self.streams = [stream_key(ex, ch) for ex, exc in cfg.exchanges.items() for ch in exc.channels()]
        self.open: dict[SliceKey, OpenSlice] = {}
        self.unacked: dict[str, OrderedDict[str, set[SliceKey]]] = {k: OrderedDict() for k in self.streams}
        self.watermark: dict[str, int] = {}
        self.written: dict[SliceKey, None] = {}
        self.stopping = False
        self._last_lag_report = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_groups(self) -> None:
        for key in self.streams:
            try:
                self.client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    def run(self) -> None:
        """Until SIGTERM/SIGINT; then drain the streams, write every open slice and return."""
        self.ensure_groups()
        self.recover_pending()
        while not self.stopping:
            self.step(READ_BLOCK_MS)
        self.drain()

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        LOG.info("stop requested (signal %s): draining streams", signum)
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def recover_pending(self) -> None:
        """Re-read entries delivered to this consumer before a crash and never acknowledged."""
        cursor = dict.fromkeys(self.streams, "0")
        while cursor:
            resp = self.client.xreadgroup(CONSUMER_GROUP, CONSUMER_NAME, cursor, count=READ_COUNT)  # type: ignore[arg-type]
            done = []
            for key, entries in self._decode_keys(resp):
                if not entries:
                    done.append(key)
                    continue
                for eid, fields in entries:
                    self.ingest(key, eid, fields)
                cursor[key] = entries[-1][0]
            for key in done:
                cursor.pop(key, None)
            if not resp:
                break
        recovered = sum(len(v) for v in self.unacked.values())
        if recovered:
            LOG.info("recovered %d unacknowledged entries from a previous run", recovered)
        self.close_ready()

    def drain(self) -> None:
        while self.step(None):
            pass
        self.flush_all()
        LOG.info("drained: every open slice written and acknowledged")

    # -- reading -----------------------------------------------------------------------------

    def step(self, block_ms: int | None) -> int:
        """Read once from every stream; write slices that closed. Returns entries read."""
        resp = self.client.xreadgroup(
            CONSUMER_GROUP, CONSUMER_NAME, dict.fromkeys(self.streams, ">"), count=READ_COUNT, block=block_ms  # type: ignore[arg-type]
        )
        n = 0
        for key, entries in self._decode_keys(resp):
            for eid, fields in entries:
                self.ingest(key, eid, fields)
                n += 1
        self.close_ready()
        self._report_lag()
        return n

    @staticmethod
    def _decode_keys(resp: Any) -> list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]]:
        out = []
        for key, entries in resp or []:
            k = key.decode() if isinstance(key, bytes) else key
            out.append((k, [(e.decode() if isinstance(e, bytes) else e, f) for e, f in entries]))
        return out

    def ingest(self, key: str, eid: str, fields: dict[bytes, bytes]) -> None:
        exchange, channel = parse_stream_key(key)
        try:
            table = decode_batch(channel, fields, key, eid)
        except BadEntry as err:
            self._dead_letter(key, eid, fields, err)
            return
        keys: set[SliceKey] = set()
        for sk, part in self._split(channel, exchange, table):
            keys.add(sk)
            self._add_part(sk, part, eid)
        self.unacked[key][eid] = keys
        if table.num_rows:
            newest = int(np.max(table.column("ts_event").to_numpy()))
            self.watermark[exchange] = max(self.watermark.get(exchange, 0), newest)
        if not keys:
            self._ack(key, [eid])

    def _split(self, channel: str, exchange: str, table: pa.Table) -> list[tuple[SliceKey, pa.Table]]:
        if table.num_rows == 0:
            return []
        ts = table.column("ts_event").to_numpy()
        starts = ts - ts % self.width_ns
        symbols = table.column(SYMBOL_COLUMN).to_numpy(zero_copy_only=False)
        if starts[0] == starts[-1] and (starts == starts[0]).all() and (symbols == symbols[0]).all():
            return [(SliceKey(channel, exchange, str(symbols[0]), int(starts[0])), table.drop_columns(SYMBOL_COLUMN))]
        sym_codes, sym_index = np.unique(symbols, return_inverse=True)
        start_codes, start_index = np.unique(starts, return_inverse=True)
        combined = sym_index * len(start_codes) + start_index
        out = []
        for code in np.unique(combined):
            rows = np.nonzero(combined == code)[0]
            sk = SliceKey(channel, exchange, str(sym_codes[code // len(start_codes)]),
                          int(start_codes[code % len(start_codes)]))
            out.append((sk, table.take(pa.array(rows)).drop_columns(SYMBOL_COLUMN)))
        return out

    def _add_part(self, sk: SliceKey, part: pa.Table, eid: str) -> None:
        if sk in self.written:
            metrics.LATE_RECORDS.labels(sk.channel, sk.exchange).inc(part.num_rows)
            LOG.warning("exchange=%s channel=%s symbol=%s: %d records arrived after slice %s was written; "
                        "they land in an additional part", sk.exchange, sk.channel, sk.symbol, part.num_rows,
                        sk.stamp())
        slot = self.open.get(sk)
        if slot is None:
            slot = self.open[sk] = OpenSlice(first_entry_id=eid)
        slot.parts.append(part)
        slot.rows += part.num_rows

    def _dead_letter(self, key: str, eid: str, fields: dict[bytes, bytes], err: BadEntry) -> None:
        metrics.BAD_ENTRIES.labels(key).inc()
        LOG.error("%s; moved to %s", err, dead_letter_key(key))
        dead = {**fields, b"source_id": eid.encode(), b"error": str(err).encode()}
        self.client.xadd(dead_letter_key(key), dead, maxlen=DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
        self._ack(key, [eid])

    # -- writing -----------------------------------------------------------------------------

    def close_ready(self) -> None:
        horizon = self.width_ns + self.lateness_ns
        ready = [sk for sk in self.open if sk.start_ns + horizon <= self.watermark.get(sk.exchange, 0)]
        for sk in sorted(ready):
            self.write(sk)

    def flush_all(self) -> None:
        for sk in sorted(self.open):
            self.write(sk)

    def write(self, sk: SliceKey) -> None:
        slot = self.open.pop(sk)
        table = pa.concat_tables(slot.parts)
        path = write_slice(self.root, sk, table, slot.first_entry_id, self.cfg.lake.compression_level)
        size = path.stat().st_size
        self.written[sk] = None
        self._forget_old_written(sk.start_ns)
        metrics.SLICES_WRITTEN.labels(sk.channel, sk.exchange).inc()
        metrics.ROWS_WRITTEN.labels(sk.channel, sk.exchange).inc(table.num_rows)
        metrics.BYTES_WRITTEN.labels(sk.channel, sk.exchange).inc(size)
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:rows", table.num_rows)
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:files", 1)
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:bytes", size)
        pipe.execute()
        LOG.debug("exchange=%s channel=%s symbol=%s: wrote %d rows to %s", sk.exchange, sk.channel, sk.symbol,
                  table.num_rows, path)
        self._release(sk)

    def _release(self, sk: SliceKey) -> None:
        key = stream_key(sk.exchange, sk.channel)
        pending = self.unacked[key]
        done = []
        for eid, keys in pending.items():
            keys.discard(sk)
            if not keys:
                done.append(eid)
        if done:
            self._ack(key, done)

    def _ack(self, key: str, ids: list[str]) -> None:
        self.client.xack(key, CONSUMER_GROUP, *ids)
        for eid in ids:
            self.unacked[key].pop(eid, None)

    def _forget_old_written(self, newest_start: int) -> None:
        horizon = newest_start - WRITTEN_MEMORY_SECONDS * NS_PER_SECOND
        if len(self.written) > 10_000:
            self.written = {k: None for k in self.written if k.start_ns >= horizon}

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_report < LAG_REPORT_INTERVAL_SECONDS:
            return
        self._last_lag_report = now
        for key in self.streams:
            metrics.CONSUMER_LAG.labels(key).set(stream_lag(self.client, key))
            metrics.STREAM_LENGTH.labels(key).set(self.client.xlen(key))


def run(cfg: Config, redis_url: str) -> None:
    agg = Aggregator(cfg, redis.Redis.from_url(redis_url))
    agg.install_signal_handlers()
    LOG.info("aggregating %d streams into %s (slices of %ss)", len(agg.streams), agg.root, cfg.lake.slice_seconds)
    agg.run()
