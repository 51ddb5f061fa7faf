"""``data-feed role gateway`` as a process, on a permission table in SQLite, MariaDB and PostgreSQL: /health,
/metrics, revocation on a live connection, SIGTERM, and no secret in its log."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa
import yaml

from data_feed.access import store
from data_feed.access.client import Client
from data_feed.access.tables import Status
from data_feed.access.zap import server_keys
from data_feed.bus.wire import Proxy, endpoints
from data_feed.cache.redis_server import free_port
from tests.access.harness import FeaturePublisher, gateway_config
from tests.access.test_gateway import collect
from tests.harness import CLI, wait_for
from tests.runtime.test_services import health


def test_gateway_role_serves_health_metrics_and_revokes_live_on_each_database(
        tmp_path: Path, access_engine: sa.Engine) -> None:
    cfg = gateway_config(tmp_path, access_engine)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    store.add_dataset(access_engine, "binance-1s", "features.1s.BINANCE.*", "ops")
    alice = store.add_consumer(access_engine, "alice", "ops")
    store.transition(access_engine, "alice", "binance-1s", Status.REQUESTED, "alice")
    store.transition(access_engine, "alice", "binance-1s", Status.GRANTED, "boss")
    proxy = Proxy(cfg).start()
    publisher = FeaturePublisher(endpoints(cfg)[0]).start()
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CLI, "role", "gateway", "--config", str(config), "--http-port", str(port)],
                                stdout=log, stderr=log)
    client = None
    try:
        wait_for(lambda: proc.poll() is None and health(port)[0] == 200, 60, "the gateway's /health 200")
        server_public = server_keys(cfg.gateway_key_file())[0]
        client = Client(cfg.gateway.endpoint, server_public, alice.public_key, alice.secret_key, "alice",
                        on_control=lambda m: None)
        client.subscribe("features.1s.BINANCE.*")
        wait_for(lambda: collect(client, 0.3), 20, "alice's first batches from the role")  # type: ignore[arg-type]
        store.transition(access_engine, "alice", "binance-1s", Status.REVOKED, "boss")
        changed = time.time()
        after = collect(client, 1.5)
        lag = max((t for t, _, _ in after), default=changed) - changed
        assert lag < 1.0, f"last batch {lag:.3f}s after the revocation"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'data_feed_gateway_deliveries_total{consumer="alice"}' in text
        assert 'data_feed_gateway_revocations_total{consumer="alice"} 1.0' in text
        assert "data_feed_gateway_revocation_to_last_delivery_seconds_count 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
        publisher.stop()
        proxy.stop()
    logs = log_path.read_text()
    assert "gateway: serving" in logs and "exiting cleanly" in logs
    assert alice.secret_key not in logs and alice.token not in logs
    print(f"revocation on {access_engine.url.get_backend_name()}: last delivery {lag:.3f}s after the change")
