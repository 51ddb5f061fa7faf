"""The maintenance lock of a lake on S3: a lease object, ``_maintenance.lock`` under the lake prefix, so two
hosts never compact, expire or repair the same lake at once (a host-local lock cannot see the other host).

- Taking it: one PUT with ``If-None-Match: *`` creates the object only when there is none. When there is one,
  it names its holder and its expiry: a live lease is ``MaintenanceBusy`` naming the holder; an expired one
  (its holder died or stalled past the TTL) is taken over by a PUT with ``If-Match`` its ETag, so of two hosts
  taking over at once exactly one wins.
- Holding it: a thread renews the lease every third of its TTL with ``If-Match`` the ETag of its own last PUT.
  A renewal that fails means the lease is no longer ours; ``check`` (called before every swap and every
  partition dropped) then raises ``LeaseLost``, so a stalled run stops before it changes the catalog again.
- Releasing it: the object is deleted when it is still ours.

Expiry is compared on each host's wall clock: the TTL (minutes) is far above any sane clock skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType
from typing import Any

import botocore.exceptions

from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake.catalog import LOCK_FILE, MaintenanceBusy

LOG = logging.getLogger("data_feed.lake")

LEASE_OBJECT_NAME = LOCK_FILE  # the local lake's lock file name, as an object under the lake prefix
LEASE_TTL_SECONDS = 120.0
RENEWALS_PER_TTL = 3
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


class LeaseLost(RuntimeError):
    """The maintenance lease expired and another run took it over: this run must not change the lake."""


def _code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class S3Lease:
    """``with S3Lease(client, bucket, key):`` the lake's maintenance lock, held while the block runs."""

    def __init__(self, client: Any, bucket: str, key: str, ttl_seconds: float = LEASE_TTL_SECONDS) -> None:
        self.client, self.bucket, self.key, self.ttl = client, bucket, key, ttl_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time_ns()
        return json.dumps({"holder": self.holder, "acquired_ns": now,
                           "expires_ns": now + int(self.ttl * NS_PER_SECOND)}).encode()

    def _put(self, **condition: str) -> bool:
        """One conditional PUT of our lease; False when the condition failed (someone else's lease is there)."""
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)
        except botocore.exceptions.ClientError as err:
            if _code(err) in CONFLICT_CODES:
                return False
            raise
        self.etag = resp["ETag"]
        return True

    def _current(self) -> tuple[dict[str, Any], str] | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except botocore.exceptions.ClientError as err:
            if _code(err) in {"NoSuchKey", "404"}:
                return None
            raise
        try:
            return json.loads(resp["Body"].read()), resp["ETag"]
        except ValueError:
            return {"holder": "(unreadable lease)", "expires_ns": 0}, resp["ETag"]

    def acquire(self) -> None:
        if self._put(IfNoneMatch="*"):
            return self._start_renewing()
        current = self._current()
        if current is None and self._put(IfNoneMatch="*"):  # released between our PUT and GET
            return self._start_renewing()
        body, etag = current if current is not None else ({"holder": "another run", "expires_ns": 2**63}, "")
        if int(str(body.get("expires_ns", 0))) <= time.time_ns() and etag and self._put(IfMatch=etag):
            LOG.warning("s3://%s/%s: took over the expired maintenance lease of %s", self.bucket, self.key,
                        body.get("holder"))
            return self._start_renewing()
        raise MaintenanceBusy(f"another compaction or retention run is working on s3://{self.bucket}/"
                              f"{self.key.rsplit('/', 1)[0]} (lease held by {body.get('holder')})")

    def _start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew, name="s3-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / RENEWALS_PER_TTL):
            try:
                renewed = self.etag is not None and self._put(IfMatch=self.etag)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
                LOG.warning("s3://%s/%s: renewing the maintenance lease failed (%s); retrying", self.bucket,
                            self.key, err)
                continue
            if not renewed:
                LOG.error("s3://%s/%s: the maintenance lease was taken over; this run stops changing the lake",
                          self.bucket, self.key)
                self.lost.set()
                return

    def check(self) -> None:
        """``LeaseLost`` once the lease is no longer ours."""
        if self.lost.is_set():
            raise LeaseLost(f"s3://{self.bucket}/{self.key}: the maintenance lease expired and another run took it")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        current = self._current()
        if current is not None and current[0].get("holder") == self.holder:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def __enter__(self) -> S3Lease:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
