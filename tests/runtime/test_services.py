"""Every role a service of its own, as docker-compose or Kubernetes would run them: redis-server, then
`data-feed role simulator`, `bus`, `featurizer`, two `aggregator` shards and two collectors, each its own
process started from one config, without the spawner. Each answers /health on its own port and exits 0 on
SIGTERM; the lake holds what `data-feed run` lands: every trade the simulator sent, once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import yaml

from data_feed.cache.redis_server import PrivateRedis, free_port
from data_feed.contracts.config import parse_config
from data_feed.contracts.rundir import SIM_CERT_NAME
from data_feed.runtime.simctl import SimulatorControl
from tests.harness import CLI, pipeline_config, trade_ids, wait_for

RUN_SECONDS = 12
ORDER = ("simulator", "bus", "featurizer", "aggregator 0", "aggregator 1", "collector BINANCE", "collector COINBASE")


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


class Service:
    def __init__(self, name: str, config: Path, logs: Path) -> None:
        kind, _, arg = name.partition(" ")
        self.name, self.port = name, free_port()
        argv = [CLI, "role", kind, *([arg] if arg and kind == "collector" else [])]
        argv += ["--config", str(config), "--http-port", str(self.port)]
        if kind == "aggregator":
            argv += ["--shard", arg]
        self.log: IO[bytes] = open(logs / f"{name.replace(' ', '-')}.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}"
        return health(self.port)[0] == 200

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.log.close()
        return code


@pytest.mark.slow
def test_every_role_runs_alone_from_one_config_and_the_lake_holds_every_sent_trade_once(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", persist=False).start()
    data = pipeline_config(tmp_path, redis={"url": server.url}, simulator={"port": free_port()},
                           aggregator={"shards": 2},
                           bus={"publish_endpoint": f"tcp://127.0.0.1:{free_port()}",
                                "subscribe_endpoint": f"tcp://127.0.0.1:{free_port()}"})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = parse_config(data, "test")
    logs = tmp_path / "logs"
    logs.mkdir()
    services: dict[str, Service] = {}
    try:
        for name in ORDER:
            services[name] = Service(name, config, logs)
            wait_for(services[name].ready, 60, f"{name} to answer /health with 200")
        for service in services.values():  # what DataFeedProcessRestarted watches for a pod that restarted
            with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5) as resp:
                assert b"\nprocess_start_time_seconds " in resp.read(), service.name
        time.sleep(RUN_SECONDS)
        sim = SimulatorControl(cfg, cfg.simulator_urls()[0], str(cfg.simulator_cert_dir() / SIM_CERT_NAME),
                               redis.Redis.from_url(server.url), lambda exchange: True)
        sim.pause_and_catch_up(tmp_path)
        codes = {name: services[name].stop() for name in ("collector BINANCE", "collector COINBASE", "featurizer",
                                                         "aggregator 0", "aggregator 1", "simulator", "bus")}
    finally:
        for service in services.values():
            if service.proc.poll() is None:
                service.proc.kill()
        server.stop()
    assert codes == dict.fromkeys(codes, 0), codes
    sent = json.loads((tmp_path / "sent-at-stop.json").read_text())["stats"]
    landed = trade_ids(Path(cfg.lake.root))
    for exchange in ("BINANCE", "COINBASE"):
        for symbol, account in sent[exchange]["symbols"].items():
            ids = landed[(exchange, symbol)]
            assert len(ids) == len(set(ids)) == account["trades_sent"] > 50, (exchange, symbol)
    for shard in (0, 1):  # each shard landed a share of the streams, none was left out
        log = (logs / f"aggregator-{shard}.log").read_text()
        assert int(log.split("aggregating ", 1)[1].split(" ", 1)[0]) > 0, log[-2000:]
