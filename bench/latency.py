"""End-to-end feature latency: a frame leaving the simulator -> its 1-second feature slice on the bus.

Runs the real pipeline (``data-feed run``: simulator over TLS, cryptofeed collector,
Redis, bus proxy, featurizer, aggregator) with one simulated exchange producing about
``--rate`` trade frames per second, and subscribes to ``features.1s.*`` on the bus like
any signal consumer. For every published slice it takes the slice's last trade (its
exchange timestamp, stamped by the simulator when it generates the frame, at most one
simulator tick before sending it) and the wall time the slice reached this subscriber:

* ``last frame -> published``: what a consumer waits after the last frame of a slice;
  with ``allowed_lateness_seconds: 0`` a slice closes when the first frame after its end
  arrives, so this is the pipeline's own delay plus at most one inter-frame gap.
* ``slice end -> published``: the delay after the slice's end time.
* ``closing frame receipt -> published``: the pipeline's own delay, from the moment the collector received
  the frame that let the slice close (the first trade or book frame of the exchange at or after the slice's
  end: with no lateness that frame moves the watermark past it) to the feature reaching this subscriber. The
  receipt time is the row's ``ts_recv``, stamped by cryptofeed when the frame arrived (same host, same
  clock); the bench reads it from the bus's market topics, which every collector publishes.

With ``--provisional-ms N`` the featurizer also publishes each open slice every N ms
(``featurizer.provisional_ms``, on ``features.open-1s.*``): ``newest trade receipt -> provisional`` is, per
update, from the receipt of the newest trade it includes to its arrival here (so up to N ms of waiting for the
next update, plus the pipeline).

After the run, ``featurizer backfill`` recomputes the features from the lake and every landed live slice is
compared with it, column for column (``ts_recv`` aside): ``RESULT features_live_equals_backfill 1`` when all are
bit-identical.

Prints p50/p99/max of each, the frame rate achieved, and ends with ``RESULT`` lines:
``features_latency_p99_ms`` (p99 of closing frame receipt -> published), ``features_latency_last_frame_p99_ms``,
``features_provisional_latency_p99_ms`` (with ``--provisional-ms``) and ``features_live_equals_backfill``.

    .venv/bin/python bench/latency.py [--rate 10000] [--seconds 40] [--publish-on-receipt] [--provisional-ms 20]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from data_feed.access.query import run_query
from data_feed.bus.wire import Subscriber, decode_rows, provisional_topic
from data_feed.contracts.schemas import batch_columns

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ["BTC-USDT", "ETH-USDT"]
WARMUP_SECONDS = 3.0  # connection set-up and the first snapshot are not steady state
COOLDOWN_SECONDS = 2.0  # at stop the simulator pauses first: the last slices are closed by the final flush
NS_PER_SECOND = 1e9
FEATURE_COLUMNS = batch_columns("features")
KEY = ["exchange", "symbol", "interval", "ts_event"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, rate: float, on_receipt: bool = False, provisional_ms: int = 0) -> tuple[Path, str]:
    sub_endpoint = f"tcp://127.0.0.1:{free_port()}"
    data: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "data-feed-config.yaml").read_text())
    binance = data["exchanges"]["BINANCE"]
    data["exchanges"] = {"BINANCE": {"source": "simulator", "trades": {"symbols": SYMBOLS},
                                     "market": {**binance["market"], "trades_per_second": rate / len(SYMBOLS)}}}
    data["lake"].update(root=str(tmp / "lake"))
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'run' / 'df.db'}"
    data["bus"].update(subscribe_endpoint=sub_endpoint, publish_on_receipt=on_receipt)
    data["featurizer"].update(intervals=["1s"], allowed_lateness_seconds=0, provisional_ms=provisional_ms)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, sub_endpoint


MARKET_PREFIXES = [b"trades.", b"l2_book."]
PROVISIONAL = provisional_topic("1s", "", "")[: -len("..")]  # features.open-1s.
MARKET_TIMES = [batch_columns("trades").index(name) for name in ("ts_event", "ts_recv")]
assert [batch_columns("l2_book").index(name) for name in ("ts_event", "ts_recv")] == MARKET_TIMES


def listen(endpoint: str, stop: threading.Event, out: list[tuple[float, list[Any]]],
           provisional: list[tuple[float, list[Any]]]) -> None:
    """Feature rows (final, and provisional ones apart) with the time each reached this subscriber (its own
    socket and thread: nothing else to do)."""
    sub = Subscriber(endpoint, [b"features.1s.", PROVISIONAL], 100_000)
    while not stop.is_set():
        msg = sub.recv(100)
        if msg is not None:
            now = time.time()
            (provisional if msg[0].startswith(PROVISIONAL) else out).extend((now, row) for row in decode_rows(msg[1]))
    sub.close()


def record_frames(endpoint: str, stop: threading.Event, batches: list[tuple[bytes, bytes]]) -> None:
    """Every market batch on the bus (topic, payload), kept raw: decoded after the run, so this thread holds the
    GIL little."""
    sub = Subscriber(endpoint, MARKET_PREFIXES, 1_000_000)
    while not stop.is_set():
        msg = sub.recv(100)
        if msg is not None:
            batches.append(msg)
    sub.close()


def frame_times(batches: list[tuple[bytes, bytes]], prefix: bytes = b"") -> list[tuple[str, float, float]]:
    """(symbol, ts_event, ts_recv) of every market row (of the topics starting with ``prefix``)."""
    event, recv = MARKET_TIMES
    return [(str(r[0]), float(r[event]), float(r[recv])) for topic, payload in batches if topic.startswith(prefix)
            for r in decode_rows(payload)]


def trade_receipts(batches: list[tuple[bytes, bytes]]) -> dict[tuple[str, int], float]:
    """(symbol, exchange time in us) -> the earliest receipt of a trade stamped then."""
    out: dict[tuple[str, int], float] = {}
    for symbol, event, recv in frame_times(batches, MARKET_PREFIXES[0]):
        key = (symbol, round(event * 1e6))
        out[key] = min(recv, out.get(key, recv))
    return out


def closing_receipts(frames: list[tuple[str, float, float]], ends: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """For each slice end (float seconds): the earliest receipt of a frame stamped at or after it."""
    arr = np.array(sorted((event, recv) for _, event, recv in frames))
    suffix_min = np.minimum.accumulate(arr[::-1, 1])[::-1]
    at = np.searchsorted(arr[:, 0], ends, side="left")
    return np.where(at < len(arr), suffix_min[np.minimum(at, len(arr) - 1)], np.nan)


def report(name: str, values_ms: np.ndarray[Any, Any], what: str = "slices") -> float:
    p50, p99, worst = np.percentile(values_ms, 50), np.percentile(values_ms, 99), values_ms.max()
    print(f"  {name:34s} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   max {worst:8.2f} ms   ({len(values_ms)} {what})")
    return float(p99)


def live_equals_backfill(tmp: Path, config: Path) -> tuple[bool, int]:
    """``featurizer backfill`` over the run's lake against the live features it landed: (all bit-identical,
    slices compared)."""
    out = tmp / "backfill.parquet"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "featurizer"), "backfill", "--config", str(config),
                           "--from", "0", "--to", "4102444800", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"featurizer backfill failed:\n{done.stderr[-3000:]}")
    live = run_query(tmp / "lake", "select * exclude (date) from features").sort_values(KEY).reset_index(drop=True)
    batch = pq.read_table(out).to_pandas().sort_values(KEY).reset_index(drop=True)
    if len(live) != len(batch) or not live[KEY].astype(str).equals(batch[KEY].astype(str)):
        print(f"  live {len(live)} slices, backfill {len(batch)}: different slices")
        return False, len(live)
    differ = [col for col in live.columns if col not in (*KEY, "ts_recv") and not np.array_equal(
        live[col].to_numpy(dtype=np.float64, na_value=np.nan), batch[col].to_numpy(dtype=np.float64, na_value=np.nan),
        equal_nan=True)]
    if differ:
        print(f"  live and backfill differ in {differ}")
    return not differ, len(live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="trade frames per second, all symbols")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--publish-on-receipt", action="store_true",
                        help="bus.publish_on_receipt: collectors publish each frame's rows, not each flush")
    parser.add_argument("--provisional-ms", type=int, default=0,
                        help="featurizer.provisional_ms: the open slice every N ms too (0: off)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="df-latency-") as tmpdir:
        tmp = Path(tmpdir)
        config, endpoint = write_config(tmp, args.rate, args.publish_on_receipt, args.provisional_ms)
        got: list[tuple[float, list[Any]]] = []
        provisional: list[tuple[float, list[Any]]] = []
        batches: list[tuple[bytes, bytes]] = []
        stop = threading.Event()
        listener = threading.Thread(target=listen, args=(endpoint, stop, got, provisional), daemon=True)
        recorder = threading.Thread(target=record_frames, args=(endpoint, stop, batches), daemon=True)
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "data-feed"), "run", "--config", str(config),
                                 "--duration", str(args.seconds), "--no-status"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        listener.start()
        recorder.start()
        _, err = proc.communicate(timeout=args.seconds + 180)
        stop.set()
        listener.join()
        recorder.join()
        if proc.returncode != 0:
            raise SystemExit(f"data-feed run failed:\n{err[-3000:]}")
        equal, compared = live_equals_backfill(tmp, config)
        log = (tmp / "run" / "logs" / "featurizer.log").read_text()
        late = [line.split("stopped; ", 1)[1].strip()[:200] for line in log.splitlines() if "stopped; late" in line]
    idx = {name: i for i, name in enumerate(FEATURE_COLUMNS)}
    rows = [(t, r) for t, r in got if r[idx["trade_count"]] > 0]
    start = min(r[idx["ts_event"]] for _, r in rows) + WARMUP_SECONDS
    end = max(r[idx["ts_event"]] for _, r in rows) - COOLDOWN_SECONDS
    steady = [(t, r) for t, r in rows if start <= r[idx["ts_event"]] < end]
    n_frames = sum(r[idx["trade_count"]] for _, r in steady)
    span = max(r[idx["ts_event"]] for _, r in steady) + 1 - start
    last_frame = np.array([(t - r[idx["last_trade_ts"]] / NS_PER_SECOND) * 1e3 for t, r in steady])
    after_end = np.array([(t - r[idx["ts_event"]] - 1.0) * 1e3 for t, r in steady])
    ends = np.array([r[idx["ts_event"]] + 1.0 for _, r in steady])  # feature rows on the bus: float seconds
    receipt = np.array([t for t, _ in steady]) - closing_receipts(frame_times(batches), ends)
    print(f"real pipeline, {len(SYMBOLS)} symbols, target {args.rate:,.0f} trade frames/s; achieved "
          f"{n_frames / span:,.0f} frames/s over {span:.0f} s of steady state; publish on receipt: "
          f"{args.publish_on_receipt}; provisional every {args.provisional_ms or '-'} ms")
    p99 = report("closing frame receipt -> published", receipt[~np.isnan(receipt)] * 1e3)
    p99_last = report("last frame -> published", last_frame)
    report("slice end -> published", after_end)
    p99_prov = None
    if args.provisional_ms:
        received = trade_receipts(batches)
        stale = np.array([t - received[(r[0], r[idx["last_trade_ts"]] // 1000)] for t, r in provisional
                          if start <= r[idx["ts_event"]] < end and r[idx["last_trade_ts"]] is not None
                          and (r[0], r[idx["last_trade_ts"]] // 1000) in received])
        p99_prov = report("newest trade receipt -> provisional", stale * 1e3, "updates")
    print(f"live features equal to backfill over the lake: {equal} ({compared} slices compared); featurizer: "
          f"{late[-1] if late else '?'}")
    if not equal and not args.publish_on_receipt:
        print("  (after the flush, with allowed_lateness_seconds 0: a flush publishes one symbol's batch after "
              "another's, whose newer rows already moved the watermark past it; those late trades are counted and "
              "left out of the live slice, the lake has them)")
    print(f"RESULT features_latency_p99_ms {p99:.2f}")
    print(f"RESULT features_latency_last_frame_p99_ms {p99_last:.2f}")
    if p99_prov is not None:
        print(f"RESULT features_provisional_latency_p99_ms {p99_prov:.2f}")
    print(f"RESULT features_live_equals_backfill {int(equal)}")


if __name__ == "__main__":
    main()
