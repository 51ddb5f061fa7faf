"""The compose stacks: both files validate with the real `docker compose`, and the dev stack, brought up with
`up -d --build --wait` (every service but Grafana, which has no package here), lands the simulator's trades
in the S3 server with their partitions in the Glue API, config history in MariaDB, every role's target `up`
in Prometheus; `down -v` then leaves no container, network or volume of the project."""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from data_feed.cache.redis_server import free_port
from data_feed.contracts.config import load_config
from tests.deploy.docker import ROOT, Docker, build_standins, compose_images
from tests.harness import wait_for

DEV = ROOT / "docker-compose.yaml"
PROD = ROOT / "docker-compose.prod.yaml"
DEV_CONFIG = ROOT / "configs" / "compose.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "compose" / "prometheus.yml"
NOT_HERE = ("grafana",)  # no package of it in any reachable registry
PIPELINE = ("simulator", "bus", "collector-binance", "collector-coinbase", "featurizer", "aggregator-0",
            "aggregator-1", "gateway")
UP_TIMEOUT_SECONDS = 1200  # a cold build of the dev image included
LAND_TIMEOUT_SECONDS = 180
DEV_CFG = load_config(DEV_CONFIG)
assert DEV_CFG.lake.s3 is not None
DEV_BUCKET = DEV_CFG.lake.s3.bucket
PORTS = ("S3", "GLUE", "MARIADB", "PROMETHEUS", "REDIS", "SIMULATOR", "GATEWAY", "ALERTMANAGER", "GRAFANA")


def services(path: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return data


def test_compose_configs_load_and_prometheus_scrapes_every_pipeline_service() -> None:
    for config in (DEV_CONFIG, ROOT / "configs" / "compose-prod.yaml"):
        load_config(config)  # an unknown key or a bad value raises
    scraped = {t.split(":")[0] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
               for group in job["static_configs"] for t in group["targets"]}
    roles = {name for name, svc in services(DEV).items() if "role" in (svc.get("command") or [])}
    assert roles == set(PIPELINE) == scraped
    for name, svc in services(DEV).items():
        assert svc.get("init") is True, name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


@pytest.mark.docker
def test_dev_file_and_prod_override_validate_with_docker_compose(docker: Docker) -> None:
    docker.compose("config-check", [DEV], "config", "-q")
    env_file = ["--env-file", str(ROOT / ".env.example")]  # prod needs its .env: the example stands in
    docker.run("compose", *env_file, "--project-directory", str(ROOT), "-f", str(DEV), "-f", str(PROD),
               "config", "-q")
    merged = yaml.safe_load(docker.run("compose", *env_file, "--project-directory", str(ROOT), "-f", str(DEV),
                                       "-f", str(PROD), "config").stdout)["services"]
    assert {"simulator", "seaweedfs", "moto"}.isdisjoint(merged), "dev-only services run in prod"
    for name in set(PIPELINE) - {"simulator"}:
        svc = merged[name]
        assert svc["read_only"] is True and svc["restart"] == "unless-stopped", name
        assert svc["build"]["dockerfile"] == "Dockerfile" and svc["deploy"]["resources"]["limits"], name
        assert not any(v["target"] == "/src/data_feed" for v in svc["volumes"]), name


@pytest.fixture()
def stack(docker: Docker) -> Iterator[tuple[str, dict[str, int]]]:
    project = f"dftest-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in PORTS}
    env = {**docker.env, **{f"DATA_FEED_{name}_PORT": str(port) for name, port in ports.items()}}
    engine = Docker(env)
    build_standins(engine, compose_images([DEV]))
    up = [name for name in services(DEV) if name not in NOT_HERE]
    try:
        engine.compose(project, [DEV], "up", "-d", "--build", "--wait", "--wait-timeout", "900", *up,
                       timeout=UP_TIMEOUT_SECONDS)
        yield project, ports
    except AssertionError:
        print(engine.compose(project, [DEV], "logs", "--no-color", "--tail", "60", check=False).stdout[-20000:])
        raise
    finally:
        engine.compose(project, [DEV], "down", "-v", "-t", "5", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={project}"
    left = {what: engine.run(*cmd, "--filter", label, "-q").stdout.split()
            for what, cmd in {"containers": ("ps", "-a"), "volumes": ("volume", "ls"),
                              "networks": ("network", "ls")}.items()}
    assert left == {"containers": [], "volumes": [], "networks": []}, left


def landed_trades(s3: Any, prefix: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=DEV_BUCKET, Prefix=f"{prefix}/trades/"):
        for obj in page.get("Contents", []):
            exchange = obj["Key"].split("exchange=", 1)[1].split("/", 1)[0]
            found.setdefault(exchange, []).append(obj["Key"])
    return found


def prometheus_targets(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as resp:
        active = json.loads(resp.read())["data"]["activeTargets"]
    return {t["labels"]["service"]: t["health"] for t in active}


@pytest.mark.docker
@pytest.mark.slow
def test_dev_stack_lands_trades_in_s3_and_glue_saves_config_history_and_every_role_is_scraped(
        stack: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ports = stack
    assert DEV_CFG.lake.s3 is not None
    for key, value in {"AWS_ACCESS_KEY_ID": "dev", "AWS_SECRET_ACCESS_KEY": "dev",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['S3']}")
    glue = boto3.client("glue", endpoint_url=f"http://127.0.0.1:{ports['GLUE']}")
    prefix = DEV_CFG.lake.s3.prefix

    trades = wait_for(lambda: (t := landed_trades(s3, prefix)) and set(t) == {"BINANCE", "COINBASE"} and t,
                      LAND_TIMEOUT_SECONDS, "trade slices of both exchanges on the S3 server", 2.0)
    body = s3.get_object(Bucket=DEV_BUCKET, Key=trades["BINANCE"][0])["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows > 0 and "price" in table.column_names  # exchange/symbol/date: the Hive partition path

    def partitions() -> set[str]:
        found = glue.get_partitions(DatabaseName=DEV_CFG.lake.s3.database, TableName="trades")["Partitions"]
        return {p["Values"][0] for p in found}

    assert wait_for(lambda: partitions() >= {"BINANCE", "COINBASE"}, 60, "trades partitions in Glue", 2.0)

    db = sa.create_engine(f"mysql+pymysql://datafeed:datafeed@127.0.0.1:{ports['MARIADB']}/data_feed")
    with db.connect() as conn:
        hashes = conn.execute(sa.text("SELECT config_hash FROM config_history")).scalars().all()
    db.dispose()
    assert DEV_CFG.config_hash() in hashes, hashes

    targets = wait_for(lambda: (t := prometheus_targets(ports["PROMETHEUS"])) and set(t.values()) == {"up"} and t,
                       60, "every role's Prometheus target up", 2.0)
    assert set(targets) == set(PIPELINE), targets
