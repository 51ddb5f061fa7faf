"""Fault injection for one simulated exchange: what the outbox writer does instead of, or before, a frame.

Configured per exchange (``exchanges.<ID>.faults``); each fault fires once, counted by the exchange's
frames sent so far (or seconds since its first frame). Every injected fault is counted in
``data_feed_sim_faults_total{exchange,fault}`` and listed in the simulator's stats.

Faults: ``disconnect`` (close the socket; queued frames are dropped and their trade ids reported),
``sequence_gap`` (drop one book-only frame: the book still changes, the client must resync),
``malformed`` (an extra non-JSON frame), ``truncated`` (an extra copy of the next frame cut in half),
``stall`` (send nothing for ``stall_seconds``), and, for REST book snapshots, a delay and failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from data_feed.contracts.config import Fault, FaultConfig
from data_feed.observability import metrics

MALFORMED_FRAME: Final = '{"this is": not json'


@dataclass
class FaultInjector:
    exchange: str
    cfg: FaultConfig
    fired: dict[str, float] = field(default_factory=dict)  # fault -> wall time it fired
    snapshot_failures_left: int = 0
    first_frame_at: float | None = None

    def __post_init__(self) -> None:
        self.snapshot_failures_left = self.cfg.snapshot_failures

    def _due(self, fault: Fault, after: int | None, frames_sent: int) -> bool:
        return after is not None and frames_sent >= after and fault.value not in self.fired

    def next_fault(self, frames_sent: int, book_only: bool) -> Fault | None:
        """The fault to inject before the frame about to be written, if one falls due."""
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        cfg = self.cfg
        seconds_due = (cfg.disconnect_after_seconds is not None and Fault.DISCONNECT.value not in self.fired
                       and now - self.first_frame_at >= cfg.disconnect_after_seconds)
        if seconds_due or self._due(Fault.DISCONNECT, cfg.disconnect_after_frames, frames_sent):
            return self._fire(Fault.DISCONNECT)
        if book_only and self._due(Fault.SEQUENCE_GAP, cfg.sequence_gap_after_frames, frames_sent):
            return self._fire(Fault.SEQUENCE_GAP)
        for fault, after in ((Fault.MALFORMED, cfg.malformed_after_frames),
                             (Fault.TRUNCATED, cfg.truncated_after_frames), (Fault.STALL, cfg.stall_after_frames)):
            if self._due(fault, after, frames_sent):
                return self._fire(fault)
        return None

    def snapshot_fault(self) -> Fault | None:
        """For a REST book snapshot: fail it (the first N), else delay it (when configured)."""
        if self.snapshot_failures_left > 0:
            self.snapshot_failures_left -= 1
            return self._fire(Fault.SNAPSHOT_FAILURE)
        if self.cfg.snapshot_delay_seconds > 0:
            return self._fire(Fault.SNAPSHOT_DELAY)
        return None

    def _fire(self, fault: Fault) -> Fault:
        self.fired[fault.value] = time.time()
        metrics.SIM_FAULTS.labels(self.exchange, fault.value).inc()
        return fault

    def stats(self) -> dict[str, float]:
        return dict(self.fired)
