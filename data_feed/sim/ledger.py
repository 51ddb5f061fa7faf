"""Simulator continuity: trade and book-update ids never repeat, across simulator restarts and runs of one lake.

A real exchange never sends trade 1 twice; a lake of many runs must not hold it
twice either. The ledger (a JSON file: the lake root's ``_simulator.json`` for a
local lake, else the run directory's ``sim/ids.json``) keeps, per exchange and
symbol, the highest trade and update id the simulator may have used. Ids are
reserved in blocks before they are used, so the file is written rarely; a clean
stop records the exact last ids, so the next run continues without a hole. A
simulator killed mid-block restarts above the whole block: those ids were never
sent (a collector's reconnect gap spans them).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

TRADE_ID_BLOCK = 10_000
UPDATE_ID_BLOCK = 1_000_000
LEDGER_FILE_NAME = "_simulator.json"


class IdLedger:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.reserved: dict[str, dict[str, dict[str, int]]] = self._load()

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"simulator id ledger {self.path} is unreadable ({err}); remove it only if this lake "
                             "holds no simulated data") from None
        return data

    def start(self, exchange: str, symbol: str) -> tuple[int, int]:
        """(trade id, update id) to continue after: 0, 0 for a market never simulated into this lake."""
        entry = self.reserved.get(exchange, {}).get(symbol, {})
        return int(entry.get("trade", 0)), int(entry.get("update", 0))

    def reserve(self, exchange: str, symbol: str, trade_id: int, update_id: int) -> tuple[int, int]:
        """Reserve ids up to a block above (trade_id, update_id); returns the new limits."""
        limits = (trade_id + TRADE_ID_BLOCK, update_id + UPDATE_ID_BLOCK)
        self._set(exchange, symbol, *limits)
        return limits

    def record_exact(self, exchange: str, symbol: str, trade_id: int, update_id: int) -> None:
        """At a clean stop: the last ids actually used."""
        self._set(exchange, symbol, trade_id, update_id)

    def _set(self, exchange: str, symbol: str, trade_id: int, update_id: int) -> None:
        self.reserved.setdefault(exchange, {})[symbol] = {"trade": trade_id, "update": update_id}
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.reserved, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as err:  # a full lake disk must not stop the market; the next reservation retries
            LOG.error("simulator id ledger %s not written (%s); ids stay unique while this simulator runs",
                      self.path, err)
