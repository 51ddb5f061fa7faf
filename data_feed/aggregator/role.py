"""Aggregator role: Redis streams -> time slices -> parquet files in the lake, exactly once.

Reads every configured stream through one consumer group, cuts records into
slices by exchange time, and writes a slice once the exchange's watermark (the
newest event time seen) passes its end plus the allowed lateness.

Exactly once, by construction (kdb+ tick style: replay exactly what is missing).
Each stream has a journal (a Redis hash next to it) of lake files and the
stream entries each holds for its slice:

1. intent: the file's name and entry ids are journalled before the file is written;
2. the file is written atomically and fsynced, then registered in the catalog;
3. commit, one MULTI/EXEC: the journal record is marked committed, entries whose
   every slice is committed are acknowledged, journal records of entries all
   acknowledged are dropped, and the stream is trimmed below its oldest
   unacknowledged entry.

On restart, uncommitted intents are redone from their journalled entries (the
same rows, the same file name), then the unacknowledged entries are re-read and
a record is skipped when its entry is journalled as committed for its slice.
Records arriving after their slice was written open an additional part.

Faults: a lake write that fails (disk full, read-only, S3 errors) keeps the slice
open and its entries unacknowledged; the aggregator stops reading, retries with a
bounded backoff (at most ``LAKE_RETRY_MAX_SECONDS``), counts the error and says
``degraded`` with the reason in its health key until a write succeeds. A lost
Redis connection ends the process (exit 3) so that it restarts from the journal,
never from memory that may disagree with Redis. An interrupted write whose
entries are gone from the stream is dropped from the journal and the loss is
written as ``lost_entries`` gaps rows. Identical gap rows (a writer's retry) land
once.

This module is the role loop (reading, recovery, commits, health); what each entry's rows are cut into is
``data_feed.aggregator.slicer``, which entries are in which files and what a commit settles is
``data_feed.aggregator.ledger``
(pure), and writing one slice to the store and catalog is ``data_feed.aggregator.landing``.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

import numpy as np
import pyarrow as pa
import redis

from data_feed.aggregator.landing import LAKE_WRITE_ERRORS, LakeBackoff, Lander, open_lake
from data_feed.aggregator.ledger import JournalRecord, Ledger
from data_feed.aggregator.slicer import split_entry
from data_feed.cache.streams import (
    AGGREGATOR_WRITTEN_KEY,
    CONSUMER_GROUP,
    DEAD_LETTER_MAXLEN,
    BadEntry,
    configured_streams,
    consumer_name,
    dead_letter_key,
    decode_batch,
    decode_read_reply,
    encode_batch,
    ensure_group,
    journal_key,
    parse_stream_key,
    shard_of,
    stream_key,
    stream_lag,
)
from data_feed.contracts.config import GAPS_CHANNEL, Config
from data_feed.contracts.schemas import NS_PER_SECOND, GapReason
from data_feed.lake.layout import SliceKey, slice_relpath
from data_feed.lake.stats import LakeMetrics
from data_feed.observability import metrics
from data_feed.observability.status import RoleStatus

LOG = logging.getLogger("data_feed.aggregator")

READ_COUNT = 200  # entries per stream per XREADGROUP
READ_BLOCK_MS = 200
LAG_REPORT_INTERVAL_SECONDS = 5.0
WRITTEN_MEMORY_SECONDS = 86_400  # remember written slices this long to count late records
EXIT_REDIS_LOST = 3  # the process exits with this when Redis goes away: restart and recover from the journal


@dataclass
class OpenSlice:
    entries: list[str] = field(default_factory=list)  # stream entry ids, in stream order
    parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0


class Aggregator:
    def __init__(self, cfg: Config, client: redis.Redis, lake_root: Path | None = None, shard: int = 0,
                 status: RoleStatus | None = None) -> None:
        self.cfg = cfg
        self.client = client
        self.root = Path(lake_root or cfg.lake.root)
        self.store, self.catalog = open_lake(cfg, self.root)
        self.width_ns = cfg.lake.slice_seconds * NS_PER_SECOND
        self.lateness_ns = int(cfg.lake.allowed_lateness_seconds * NS_PER_SECOND)
        self.consumer = consumer_name(shard)
        self.status = status
        # the featurizer's slices land like any channel; shard i lands the streams that hash to i
        self.streams = [k for k in configured_streams(cfg) if shard_of(k, cfg.aggregator.shards) == shard]
        self.open: dict[SliceKey, OpenSlice] = {}
        self.ledger = Ledger(self.streams)
        self.watermark: dict[str, int] = {}
        self.written: dict[SliceKey, None] = {}
        self.stopping = False
        self._last_lag_report = 0.0
        self.lake = LakeBackoff()
        self.lake_metrics = LakeMetrics(self.catalog, self.streams, self.width_ns)
        self.lander = Lander(cfg, self.store, self.catalog, self.lake_metrics)

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_groups(self) -> None:
        for key in self.streams:
            ensure_group(self.client, key)

    def run(self) -> None:
        """Until SIGTERM/SIGINT; then drain the streams, write every open slice and return."""
        self.ensure_groups()
        self.recover_pending()
        if self.status is not None:
            self.status.ready()
        while not self.stopping:
            self.step(READ_BLOCK_MS)
        self.drain()
        self.report_health(force=True)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        LOG.info("stop requested (signal %s): draining streams", signum)
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def recover_pending(self) -> None:
        """Redo interrupted writes, then re-read this consumer's unacknowledged entries, skipping
        the records the journal says are already in the lake."""
        for key in self.streams:
            self._claim_pending(key)
            self._load_journal(key)
        cursor = dict.fromkeys(self.streams, "0")
        while cursor:
            resp = self.client.xreadgroup(CONSUMER_GROUP, self.consumer, cursor, count=READ_COUNT)  # type: ignore[arg-type]
            done = []
            for key, entries in decode_read_reply(resp):
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
        recovered = self.ledger.unacknowledged()
        if recovered:
            LOG.info("recovered %d unacknowledged entries from a previous run", recovered)
        for key in self.streams:
            self._drop_settled_journal(key)
        self.close_ready()

    def _claim_pending(self, key: str) -> None:
        """Entries of ``key`` another consumer read and did not acknowledge (the shard that owned the stream
        before ``aggregator.shards`` changed) become this consumer's, to be recovered like its own."""
        start, claimed = "0-0", 0
        while True:
            reply = self.client.xautoclaim(key, CONSUMER_GROUP, self.consumer, 0, start, count=READ_COUNT)
            start, entries = reply[0], reply[1]  # (next cursor, claimed entries[, ids gone from the stream])
            claimed += len(entries)
            if start in (b"0-0", "0-0"):
                break
        if claimed:
            LOG.info("stream %s: took over %d unacknowledged entries read by another aggregator", key, claimed)

    def _load_journal(self, key: str) -> None:
        journal: dict[bytes, bytes] = self.client.hgetall(journal_key(key))  # type: ignore[assignment]
        for rel, raw in journal.items():
            path = rel.decode()
            record = JournalRecord.unpack(raw)
            if not record.committed:
                LOG.warning("exchange=%s channel=%s symbol=%s: redoing interrupted write of %s (%d entries)",
                            record.key.exchange, record.key.channel, record.key.symbol, path, len(record.entries))
                if not self._redo(key, path, record):
                    continue
            self.ledger.remember(key, path, replace(record, committed=True))

    def _redo(self, key: str, path: str, record: JournalRecord) -> bool:
        """Rewrite a journalled file from exactly the entries it names, in their order; False when none is left
        (the journal record is dropped)."""
        pipe = self.client.pipeline(transaction=False)
        for eid in record.entries:
            pipe.xrange(key, eid, eid)
        parts, gone = [], []
        for eid, found in zip(record.entries, pipe.execute(), strict=True):
            if not found:
                gone.append(eid)
                continue
            table = decode_batch(record.key.channel, found[0][1], key, eid)
            parts += [part for sk, part in self._split(record.key.channel, record.key.exchange, table)
                      if sk == record.key]
        if gone:
            self._lost(key, path, record, gone)
        if not parts:
            self.client.hdel(journal_key(key), path)
            return False
        table = pa.concat_tables(parts)
        size = self.lander.land(record.key, record.entries[0], table)
        self._commit(key, path, record, table.num_rows, size, settle=False)
        return True

    def _lost(self, key: str, path: str, record: JournalRecord, gone: list[str]) -> None:
        """Entries an interrupted write named are gone from the stream: say so in the lake, as gaps rows."""
        sk = record.key
        LOG.error("exchange=%s channel=%s symbol=%s: %d of the %d entries of %s are gone from %s; their records "
                  "are lost (written as a lost_entries gap)", sk.exchange, sk.channel, sk.symbol, len(gone),
                  len(record.entries), path, key)
        now = time.time()
        detail = f"{len(gone)} stream entries of {path} gone before they landed: {', '.join(gone[:10])}"
        row = (sk.symbol, now, now, sk.channel, GapReason.LOST_ENTRIES.value, None, None, detail[:500],
               sk.start_ns, sk.start_ns + self.width_ns)
        self.client.xadd(stream_key(sk.exchange, GAPS_CHANNEL), encode_batch(GAPS_CHANNEL, [row]))  # type: ignore[arg-type]
        metrics.count_gap(sk.exchange, sk.channel, GapReason.LOST_ENTRIES.value, sk.start_ns,
                          sk.start_ns + self.width_ns)

    def drain(self) -> None:
        while self.step(None):
            pass
        self.flush_all()
        LOG.info("drained: every open slice written and acknowledged")

    # -- reading -----------------------------------------------------------------------------

    def step(self, block_ms: int | None) -> int:
        """Read once from every stream; write slices that closed. Returns entries read.

        While the lake refuses writes, nothing more is read (the streams and the writers' spills hold it):
        the step waits for the retry time, retries, and reads again only after a write succeeds."""
        if self.lake.error is not None:
            self.lake.wait(block_ms, READ_BLOCK_MS)
            self.close_ready()
            self.report_health()
            return 0
        resp = self.client.xreadgroup(
            CONSUMER_GROUP, self.consumer, dict.fromkeys(self.streams, ">"), count=READ_COUNT, block=block_ms  # type: ignore[arg-type]
        )
        n = 0
        for key, entries in decode_read_reply(resp):
            for eid, fields in entries:
                self.ingest(key, eid, fields)
                n += 1
            if entries:
                self.ledger.read_up_to(key, entries[-1][0])
        self.close_ready()
        self._report_lag()
        self.report_health()
        return n

    def ingest(self, key: str, eid: str, fields: dict[bytes, bytes]) -> None:
        exchange, channel = parse_stream_key(key)
        try:
            table = decode_batch(channel, fields, key, eid)
        except BadEntry as err:
            self._dead_letter(key, eid, fields, err)
            return
        keys: set[SliceKey] = set()
        for sk, part in self._split(channel, exchange, table):
            if self.ledger.in_lake(sk, eid):
                continue  # already in a lake file: written before a crash, entry not yet acknowledged
            keys.add(sk)
            self._add_part(sk, part, eid)
        if table.num_rows:
            newest = int(np.max(table.column("ts_event").to_numpy()))
            self.watermark[exchange] = max(self.watermark.get(exchange, 0), newest)
        if keys:
            self.ledger.hold(key, eid, keys)
        else:
            self._ack(key, [eid])

    def _split(self, channel: str, exchange: str, table: pa.Table) -> list[tuple[SliceKey, pa.Table]]:
        return split_entry(channel, exchange, table, self.width_ns)

    def _add_part(self, sk: SliceKey, part: pa.Table, eid: str) -> None:
        if sk in self.written:
            metrics.LATE_RECORDS.labels(sk.channel, sk.exchange).inc(part.num_rows)
            LOG.warning("exchange=%s channel=%s symbol=%s: %d records arrived after slice %s was written; "
                        "they land in an additional part", sk.exchange, sk.channel, sk.symbol, part.num_rows,
                        sk.stamp())
        slot = self.open.get(sk)
        if slot is None:
            slot = self.open[sk] = OpenSlice()
        slot.entries.append(eid)
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
        if self.lake.waiting():
            return
        horizon = self.width_ns + self.lateness_ns
        ready = [sk for sk in self.open if sk.start_ns + horizon <= self.watermark.get(sk.exchange, 0)]
        for sk in sorted(ready):
            if not self.write(sk):
                return  # the lake refused: retry later, in order

    def flush_all(self) -> None:
        for sk in sorted(self.open):
            if not self.write(sk):
                LOG.error("the lake refuses writes (%s); %d open slices stay in Redis, unacknowledged, for the next "
                          "start", self.lake.error, len(self.open))
                return

    def write(self, sk: SliceKey) -> bool:
        """Intent, durable file, catalog, then commit with the acknowledgements it allows. False when the lake
        refused the file: the slice stays open, its entries unacknowledged, and the retry is scheduled."""
        slot = self.open[sk]
        key = stream_key(sk.exchange, sk.channel)
        record = JournalRecord(sk, tuple(slot.entries), committed=False)
        path = slice_relpath(sk, slot.entries[0])
        self.client.hset(journal_key(key), path, record.pack())
        table = pa.concat_tables(slot.parts)
        try:
            size = self.lander.land(sk, slot.entries[0], table)
        except LAKE_WRITE_ERRORS as err:
            self.lake.failed(sk, err)
            self.report_health(force=True)
            return False
        del self.open[sk]
        if self.lake.succeeded():
            self.report_health(force=True)
        self.written[sk] = None
        self._forget_old_written(sk.start_ns)
        self._commit(key, path, record, table.num_rows, size, settle=True)
        LOG.debug("exchange=%s channel=%s symbol=%s: wrote %d rows to %s", sk.exchange, sk.channel, sk.symbol,
                  table.num_rows, path)
        return True

    def report_health(self, force: bool = False) -> None:
        """ok, or degraded with the lake's error, in the role's status (its /health and health key)."""
        if self.status is None:
            return
        if self.lake.error:
            self.status.degraded(self.lake.error)
        else:
            self.status.ok()

    def _commit(self, key: str, path: str, record: JournalRecord, rows: int, size: int, settle: bool) -> None:
        """One transaction: mark the file committed, count it and (when ``settle``) acknowledge the entries
        it completes, forget settled journal records and trim the stream below what is still needed."""
        sk = record.key
        settled = self.ledger.commit(key, path, record, settle)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(journal_key(key), path, replace(record, committed=True).pack())
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:rows", rows)
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:files", 1)
        pipe.hincrby(AGGREGATOR_WRITTEN_KEY, f"{sk.channel}:bytes", size)
        if settled.done:
            pipe.xack(key, CONSUMER_GROUP, *settled.done)
        if settled.stale:
            pipe.hdel(journal_key(key), *settled.stale)
        if settled.floor:
            pipe.xtrim(key, minid=settled.floor, approximate=True)
        pipe.execute()
        self.ledger.forget(key, settled.stale)

    def _drop_settled_journal(self, key: str) -> None:
        stale = self.ledger.settled_records(key)
        if stale:
            self.client.hdel(journal_key(key), *stale)
            self.ledger.forget(key, stale)

    def _ack(self, key: str, ids: list[str]) -> None:
        self.client.xack(key, CONSUMER_GROUP, *ids)
        self.ledger.acknowledged(key, ids)

    def _forget_old_written(self, newest_start: int) -> None:
        horizon = newest_start - WRITTEN_MEMORY_SECONDS * NS_PER_SECOND
        if len(self.written) > 10_000:
            self.written = {k: None for k in self.written if k.start_ns >= horizon}

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_report < LAG_REPORT_INTERVAL_SECONDS:
            return
        self._last_lag_report = now
        self.lake_metrics.maybe_refresh()
        for key in self.streams:
            metrics.CONSUMER_LAG.labels(key).set(stream_lag(self.client, key))
            metrics.STREAM_LENGTH.labels(key).set(self.client.xlen(key))


def run(cfg: Config, status: RoleStatus | None = None, shard: int = 0) -> None:
    assert cfg.redis.url, "the aggregator needs redis.url"
    agg = Aggregator(cfg, redis.Redis.from_url(cfg.redis.url), shard=shard, status=status)
    agg.install_signal_handlers()
    LOG.info("aggregating %d streams into %s (slices of %ss)", len(agg.streams), agg.root, cfg.lake.slice_seconds)
    try:
        agg.run()
    except (redis.ConnectionError, redis.TimeoutError) as err:
        LOG.error("Redis connection lost (%s); exiting to restart from the journal, nothing acknowledged is lost",
                  err)
        raise SystemExit(EXIT_REDIS_LOST) from None
