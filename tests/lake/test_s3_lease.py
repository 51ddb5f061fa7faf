"""The maintenance lock of a lake on S3 (``data_feed.lake.s3_lease``), against a real S3 server (SeaweedFS):
a lease object taken with a conditional PUT. Two hosts never hold it at once; a dead holder's lease is taken
over once it expires; a stalled holder that wakes after the takeover learns it lost the lease and stops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from data_feed.lake.catalog import MaintenanceBusy
from data_feed.lake.s3 import GlueCatalog, S3Store
from data_feed.lake.s3_lease import LEASE_OBJECT_NAME, LeaseLost, S3Lease
from tests.harness import wait_for
from tests.lake.conftest import BUCKET
from tests.lake.test_s3 import _land, _s3_config


def _client(servers: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=servers["s3"])


def _holder(client: Any, key: str) -> str | None:
    try:
        import json

        return str(json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())["holder"])
    except client.exceptions.NoSuchKey:
        return None


def test_a_second_run_is_refused_while_the_lease_is_held_and_gets_it_once_released(servers: dict[str, str]) -> None:
    client, key = _client(servers), f"lease-a/lake/{LEASE_OBJECT_NAME}"
    first, second = S3Lease(client, BUCKET, key), S3Lease(_client(servers), BUCKET, key)
    with first:
        assert _holder(client, key) == first.holder
        with pytest.raises(MaintenanceBusy, match=first.holder):
            second.acquire()
        first.check()  # still ours
    assert _holder(client, key) is None  # released: the object is gone
    with second:
        assert _holder(client, key) == second.holder
    assert _holder(client, key) is None


def test_a_live_lease_is_renewed_past_its_ttl(servers: dict[str, str]) -> None:
    client, key = _client(servers), f"lease-b/lake/{LEASE_OBJECT_NAME}"
    with S3Lease(client, BUCKET, key, ttl_seconds=1.5) as held:
        time.sleep(3.5)  # more than twice the TTL: only renewals keep it
        with pytest.raises(MaintenanceBusy):
            S3Lease(_client(servers), BUCKET, key, ttl_seconds=1.5).acquire()
        held.check()


def test_an_expired_lease_is_taken_over_and_its_stalled_holder_learns_it_lost_it(servers: dict[str, str]) -> None:
    client, key = _client(servers), f"lease-c/lake/{LEASE_OBJECT_NAME}"
    stalled = S3Lease(client, BUCKET, key, ttl_seconds=1.5)
    stalled.acquire()
    stalled._stop.set()  # the holder stalls (or dies): no more renewals
    assert stalled._renewer is not None
    stalled._renewer.join()
    time.sleep(1.7)  # past its expiry
    taker = S3Lease(_client(servers), BUCKET, key, ttl_seconds=60)
    taker.acquire()
    try:
        assert _holder(client, key) == taker.holder
        stalled._stop.clear()  # the stalled run wakes and tries to renew: the conditional PUT fails
        stalled._start_renewing()
        wait_for(stalled.lost.is_set, 30, "the stalled holder's renewal to fail")
        with pytest.raises(LeaseLost):
            stalled.check()
        stalled.release()  # not its lease any more: the taker's object stays
        assert _holder(client, key) == taker.holder
        taker.check()
    finally:
        taker.release()
    assert _holder(client, key) is None


def test_a_catalog_whose_lease_was_lost_neither_swaps_nor_drops_a_partition(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    """What ``LeaseLost`` is for: compaction's next manifest swap and retention's next partition drop refuse
    once the run's lease is gone, and the lake keeps every file."""
    cfg = _s3_config(tmp_path, servers, "lease-d/lake", "lease_d")
    _land(cfg, redis_url)
    assert cfg.lake.s3 is not None
    store = S3Store(cfg.lake.s3)
    catalog = GlueCatalog(cfg.lake.s3, store)
    partition = ("trades", *catalog.partitions("trades")[0])
    files = catalog.visible_files(partition)
    assert files
    with catalog.lock():
        assert catalog.lease is not None
        catalog.lease.lost.set()  # as its renewal thread does when another run took the lease over
        with pytest.raises(LeaseLost):
            catalog.swap(partition, [files[0].path], [], time.time_ns())
        with pytest.raises(LeaseLost):
            catalog.expire_partition(partition)
    assert catalog.visible_files(partition) == files
    assert ("trades", *partition[1:]) in {("trades", *p) for p in catalog.partitions("trades")}
