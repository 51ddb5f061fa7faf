"""``python helm/generate.py [--check]``: write what the chart keeps generated, or with ``--check`` exit 1
naming every file that differs from what the code builds.

- ``data-feed/values.schema.json``: the chart's own values, and under ``config:`` (and ``exchangeDefaults:``)
  the schema pydantic derives from ``data_feed.contracts.config.Config``, less the keys the chart itself sets (the
  Services' endpoints, ``redis.url``, ``aggregator.shards`` ...). Every object forbids unknown keys, so a typo
  in values fails ``helm lint`` as a typo in the YAML fails start-up.
- ``data-feed/files/``: copies of ``observability/`` (``make dashboards``), since a chart cannot read files
  outside its directory; the PrometheusRule and the Grafana dashboard ConfigMaps are made from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from data_feed.contracts.config import Config
from data_feed.observability.__main__ import render_files, sync_files

CHART = Path(__file__).resolve().parent / "data-feed"
SCHEMA_FILE = "values.schema.json"
FILES_DIR = "files"

# config keys the chart renders from its own values (or from Services and Secrets); setting them under
# config: would contradict the workloads the chart runs, so the schema leaves them out
CHART_OWNED = {
    "RedisConfig": ("url",),
    "BusConfig": ("enabled", "publish_endpoint", "subscribe_endpoint"),
    "AggregatorConfig": ("shards",),
    "FeaturizerConfig": ("enabled",),
    "GatewayConfig": ("enabled", "endpoint", "server_key_file"),
    "SpawnerConfig": ("run_dir",),
}
# exchanges come from the values list (+ config.exchanges for per-exchange settings)
CONFIG_REQUIRED_DROPPED = ("exchanges",)


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _str(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _flag(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


def _port(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": 65535, "description": description}


def _labels(description: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}, "description": description}


def _image(description: str) -> dict[str, Any]:
    return _object({"repository": {"type": "string", "minLength": 1}, "tag": {"type": "string", "minLength": 1},
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
                   ("repository", "tag")) | {"description": description}


def _k8s(description: str, kind: str = "object") -> dict[str, Any]:
    """A Kubernetes structure passed through as is (kubernetes-validate checks the rendered object)."""
    return {"type": kind, "description": description}


def _resources(description: str) -> dict[str, Any]:
    quantity = {"type": ["string", "integer", "number"]}
    amounts = _object({"cpu": quantity, "memory": quantity, "ephemeral-storage": quantity})
    return _object({"requests": amounts, "limits": amounts}) | {"description": description}


def _role(description: str, **extra: dict[str, Any]) -> dict[str, Any]:
    return _object({"resources": _resources("overrides resources for this role's container"), **extra}) | {
        "description": description}


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config: schema, its $defs) from the pydantic models, chart-owned keys removed."""
    schema = Config.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs")
    for model, keys in CHART_OWNED.items():
        for key in keys:
            del defs[model]["properties"][key]
    for key in ("bus", "aggregator", "featurizer", "gateway", "redis", "spawner"):
        schema["properties"][key].pop("default", None)  # defaults name the removed keys
    schema["required"] = [k for k in schema.get("required", []) if k not in CONFIG_REQUIRED_DROPPED]
    schema["description"] = ("the data-feed YAML config (data_feed/contracts/config.py), rendered into the ConfigMap; "
                             "exchanges, Redis, the bus and the shards are filled in by the chart")
    return schema, defs


def values_schema() -> dict[str, Any]:
    config, defs = config_schema()
    exchange_ref = {"$ref": "#/$defs/ExchangeConfig"}
    schema = _object({
        "image": _image("the data-feed image every role runs (ENTRYPOINT data-feed)"),
        "imagePullSecrets": _k8s("pod imagePullSecrets", "array"),
        "fullnameOverride": {"type": "string", "maxLength": 40, "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
                             "description": "the prefix of every object name; empty = the release name"},
        "exchanges": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"type": "string", "pattern": "^[A-Z0-9_]+$"},
                      "description": "one collector workload per exchange"},
        "exchangeDefaults": exchange_ref | {"description": "config of a listed exchange config.exchanges omits"},
        "httpPort": _port("port every role serves /health and /metrics on"),
        "resources": _resources("resources of every data-feed container, unless its role overrides them"),
        "collector": _role("collectors"),
        "aggregator": _role("aggregator shards", shards=AGGREGATOR_SHARDS),
        "featurizer": _role("the featurizer", enabled=_flag("run the featurizer")),
        "bus": _role("the ZMQ bus", publishPort=_port("XSUB port (publishers connect)"),
                     subscribePort=_port("XPUB port (subscribers connect)")),
        "gateway": _role("the signal gateway", enabled=_flag("run the gateway"),
                         port=_port("CURVE XPUB port consumers connect to"),
                         serviceType={"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                         serviceAnnotations=_labels("annotations of the gateway Service"),
                         existingKeySecret=_str("Secret holding the CURVE key pair under gateway.key; empty = "
                                                "a new key at every start")),
        "redis": REDIS,
        "secrets": _object({
            "aws": _object({"existingSecret": _str("Secret whose keys (AWS_ACCESS_KEY_ID, ...) become env")}),
            "database": _object({"existingSecret": _str("Secret holding the SQLAlchemy URL"),
                                 "key": _str("its key")}),
        }),
        "serviceAccount": _object({"create": _flag("create the ServiceAccount"),
                                   "name": _str("its name; empty = RELEASE-data-feed"),
                                   "roleArn": _str("IAM role for IRSA (eks.amazonaws.com/role-arn)"),
                                   "annotations": _labels("further annotations")}),
        "podAnnotations": _labels("annotations of every pod"),
        "nodeSelector": _labels("nodeSelector of every pod"),
        "tolerations": _k8s("tolerations of every pod", "array"),
        "affinity": _k8s("affinity of every pod"),
        "podDisruptionBudget": _object({"enabled": _flag("one PodDisruptionBudget per role"),
                                        "maxUnavailable": {"type": "integer", "minimum": 1}}),
        "networkPolicy": _object({"enabled": _flag("NetworkPolicies admitting only what each pod serves"),
                                  "metricsFrom": _k8s("peers allowed to scrape /metrics", "array"),
                                  "gatewayFrom": _k8s("peers allowed to reach the gateway; [] = any", "array")}),
        "serviceMonitor": _object({"enabled": _flag("a ServiceMonitor for every role's /metrics"),
                                   "interval": _str("scrape interval"), "labels": _labels("its labels")}),
        "prometheusRule": _object({"enabled": _flag("a PrometheusRule of the generated alerts"),
                                   "labels": _labels("its labels")}),
        "grafanaDashboards": _object({"enabled": _flag("dashboard ConfigMaps labelled grafana_dashboard=1"),
                                      "labels": _labels("further labels"),
                                      "annotations": _labels("their annotations (e.g. a folder)")}),
        "config": config,
    })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "$defs": defs}


AGGREGATOR_SHARDS = {"type": "integer", "minimum": 1, "maximum": 64,
                     "description": "aggregator workloads; also the config's aggregator.shards"}
REDIS = _object({
    "external": _object({"url": _str("redis:// URL of a Redis the chart does not run"),
                         "existingSecret": _str("Secret holding that URL"), "key": _str("its key")}),
    "image": _image("image of the built-in Redis"),
    "appendfsync": {"enum": ["always", "everysec"], "description": "AOF fsync policy of the built-in Redis"},
    "persistence": _object({"size": _str("PVC size"), "storageClass": _str("PVC storageClass; empty = default")}),
    "resources": _resources("resources of the built-in Redis"),
}) | {"description": "the built-in Redis (a StatefulSet with AOF on a PVC), or an external one"}


def render() -> dict[str, str]:
    """Every generated file, by path relative to the chart."""
    files = {SCHEMA_FILE: json.dumps(values_schema(), indent=2) + "\n"}
    files.update({f"{FILES_DIR}/{rel}": text for rel, text in render_files().items()})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python helm/generate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = sync_files(args.chart, render(), args.check)
    if args.check and stale:
        print("out of date (run `python helm/generate.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
