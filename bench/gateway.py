"""Gateway fan-out: feature batches per second delivered to 100 CURVE consumers with mixed grants, against the
bare bus rate measured in the same run.

One process publishes featurizer-encoded 1s feature batches on four topics as fast as it can through a real
bus proxy. First a plain SUB on the bus counts what it receives (the bare rate); then the gateway (in this
process, on a SQLite permission table) serves 100 consumers in another process: a third granted
``features.1s.BINANCE.*``, a third granted every exchange's ``BTC-USDT``, a third nothing. Ends with
``RESULT gateway_fanout_ratio <deliveries/s to all consumers / bare bus batches/s>``.

    .venv/bin/python bench/gateway.py [--consumers 100] [--seconds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_feed.access import store
from data_feed.access.db import make_engine
from data_feed.access.gateway import Gateway
from data_feed.access.tables import Status
from data_feed.bus.wire import Proxy, Publisher, endpoints, features_topic
from tests.access.harness import feature_payload, gateway_config

TOPICS = [("BINANCE", "BTC-USDT"), ("BINANCE", "ETH-USDT"), ("KRAKEN", "BTC-USDT"), ("KRAKEN", "ETH-USDT")]
GRANTS = [("binance", "*"), ("all", "features.*.*.BTC-USDT"), None]  # consumer i gets GRANTS[i % 3]


def publish(endpoint: str, stop: Any) -> None:
    pub = Publisher(endpoint, 100_000)
    payloads = {features_topic("1s", ex, sym): feature_payload(sym, 1_700_000_000 * 10**9, 100.0)
                for ex, sym in TOPICS}
    while not stop.is_set():
        for _ in range(100):
            for topic, payload in payloads.items():
                pub.publish(topic, payload)
        time.sleep(0.0005)  # leave the proxy and subscribers some CPU on a small machine
    pub.close()


def count_bare(endpoint: str, seconds: float, out: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"features.")
    out.put(_count([sock], seconds))


def count_consumers(endpoint: str, server_key: bytes, keys: list[tuple[str, str, str]], seconds: float,
                    out: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=2)
    socks = []
    for name, public, secret in keys:
        sock = ctx.socket(zmq.SUB)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public.encode(), secret.encode()
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, f"c/{name}/".encode())
        socks.append(sock)
    out.put(_count(socks, seconds, warmup=2.0))


def _count(socks: list[zmq.Socket[Any]], seconds: float, warmup: float = 1.0) -> float:
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    n, start, end = 0, time.monotonic() + warmup, time.monotonic() + warmup + seconds
    while (now := time.monotonic()) < end:
        for sock, _ in poller.poll(100):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if now >= start:
                    n += 1
    return n / seconds


def setup(tmp: Path, consumers: int) -> tuple[Any, list[tuple[str, str, str]]]:
    engine = make_engine(f"sqlite:///{tmp / 'access.db'}")
    store.add_dataset(engine, "binance", "features.1s.BINANCE.*", "bench")
    store.add_dataset(engine, "all", "features.1s.*.*", "bench")
    store.SCRYPT_N = 2**10  # the bench makes 100 tokens; their hash strength is not what it measures
    keys = []
    for i in range(consumers):
        made = store.add_consumer(engine, f"c{i:03d}", "bench")
        keys.append((made.consumer, made.public_key, made.secret_key))
        grant = GRANTS[i % len(GRANTS)]
        if grant is not None:
            store.transition(engine, made.consumer, grant[0], Status.REQUESTED, made.consumer)
            store.transition(engine, made.consumer, grant[0], Status.GRANTED, "bench", scope=grant[1])
    return engine, keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consumers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    engine, keys = setup(tmp, args.consumers)
    cfg = gateway_config(tmp, engine)
    proxy = Proxy(cfg).start()
    pub_ep, sub_ep = endpoints(cfg)
    mpx = mp.get_context("fork")
    stop, out = mpx.Event(), mpx.Queue()
    publisher = mpx.Process(target=publish, args=(pub_ep, stop))
    publisher.start()
    bare = mpx.Process(target=count_bare, args=(sub_ep, args.seconds, out))
    bare.start()
    bare_rate = out.get()
    bare.join()
    gateway = Gateway(cfg, engine).start()
    counter = mpx.Process(target=count_consumers, args=(cfg.gateway.endpoint, gateway.public_key, keys,
                                                        args.seconds, out))
    counter.start()
    rate = out.get()
    counter.join()
    stop.set()
    publisher.join(10)
    gateway.stop()
    proxy.stop()
    entitled = sum(1 for i in range(args.consumers) if GRANTS[i % len(GRANTS)] is not None)
    per_batch = (sum(2 for i in range(args.consumers) if GRANTS[i % len(GRANTS)] is not None)) / len(TOPICS)
    print(f"bare bus: {bare_rate:,.0f} batches/s to one plain SUB")
    print(f"gateway: {rate:,.0f} deliveries/s to {args.consumers} CURVE consumers ({entitled} with a grant, "
          f"{per_batch:.1f} copies per bus batch when nothing is dropped)")
    print(f"gateway: {rate / per_batch:,.0f} bus batches/s fanned out in full")
    print(f"RESULT gateway_fanout_ratio {rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
