"""Small lakes for CLI tests: records written to a real redis-server as collectors write them (float-second times,
batched entries) and landed by the real aggregator into real parquet files and a real catalog."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.config import Config
from tests.conftest import ROOT

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
FEATURIZER_CLI = str(ROOT / ".venv" / "bin" / "featurizer")
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
ENTRY_ROWS = 50

TradeRow = tuple[str, float, float, int | None, str | None, str, float, float]  # symbol, ts_event, ts_recv, ...


def trade_rows(symbol: str, n: int, start: float = T0, step: float = 0.01) -> list[TradeRow]:
    return [(symbol, start + i * step, start + i * step + 0.0005, i + 1, None, "buy" if i % 2 else "sell",
             100.0 + (i % 7) * 0.25, 0.5 + (i % 3)) for i in range(n)]


def land(cfg: Config, redis_url: str, exchange: str, channel: str, rows: Sequence[tuple[Any, ...]]) -> Path:
    """Cache ``rows`` (batch tuples of ``channel``) for ``exchange`` and land everything cached; the lake root."""
    client = redis.Redis.from_url(redis_url)
    for i in range(0, len(rows), ENTRY_ROWS):
        client.xadd(stream_key(exchange, channel), encode_batch(channel, list(rows[i:i + ENTRY_ROWS])))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    agg.catalog.close()  # as a stopped aggregator leaves it: no open connection, no WAL files
    return Path(cfg.lake.root)


def drop_root_file_overrides() -> None:
    """``preexec_fn``: the child obeys file permissions even as root (a read-only mount, as far as it can tell)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails harmlessly when not root: permissions apply anyway


def cli(*args: str, unprivileged: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``data-feed ARGS`` in a subprocess, as a user runs it."""
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=drop_root_file_overrides if unprivileged else None)


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
