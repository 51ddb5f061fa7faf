"""The Helm chart under the real helm, kubernetes-validate, checkov and its values schema; the config it
renders loaded by data-feed's own load_config; the bus and Redis pods' arguments run for real.

Every value set under helm/data-feed/ci/ (default, three-exchange, external-redis, all-flags-on) is linted
and rendered once per module; the tests read the rendered objects back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
import zmq

from data_feed.contracts.config import Config, load_config
from tests.deploy.tools import node_modules, tool
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "data-feed"
CRDS = Path(__file__).resolve().parent / "crds"
VALUE_SETS = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "data-feed"
THREE_EXCHANGES = ["--set", "exchanges={BINANCE,COINBASE,KRAKEN}"]
WORKLOADS = ("Deployment", "StatefulSet")
CRD_KINDS = {"ServiceMonitor": "servicemonitor", "PrometheusRule": "prometheusrule"}
RENDERED_CONFIG = "/run/data-feed/config.yaml"
Docs = list[dict[str, Any]]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=60)


def _template(*args: str) -> str:
    result = _helm("template", "t", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _docs(text: str) -> Docs:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _render(*args: str) -> Docs:
    return _docs(_template(*args))


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """Each value set's `helm template` output, by value set name."""
    return {name: _template("-f", str(path)) for name, path in VALUE_SETS.items()}


def _kind(docs: Docs, *kinds: str) -> Docs:
    return [d for d in docs if d["kind"] in kinds]


def _component(docs: Docs, component: str) -> Docs:
    return [d for d in _kind(docs, *WORKLOADS) if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]


def _config_map(docs: Docs) -> dict[str, str]:
    (cm,) = [d for d in _kind(docs, "ConfigMap") if d["metadata"]["name"] == "t-config"]
    data: dict[str, str] = cm["data"]
    return data


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = doc["spec"]["template"]["spec"]
    return pod


def test_value_sets_are_the_four_the_chart_promises() -> None:
    assert sorted(VALUE_SETS) == ["all-flags-on", "default", "external-redis", "three-exchange"]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_chart_passes_helm_lint_strict(values: str) -> None:
    result = _helm("lint", "--strict", str(CHART), "-f", str(VALUE_SETS[values]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("setting", "named"), [
    ("imagee.tag=x", "additional properties 'imagee' not allowed"),
    ("config.lake.rooot=x", "at '/config/lake': additional properties 'rooot' not allowed"),
    ("config.exchanges.BINANCE.trades.symbolz=x", "at '/config/exchanges/BINANCE/trades'"),
    ("config.lake.slice_seconds=0", "at '/config/lake/slice_seconds'"),
    ("exchangeDefaults.sourc=live", "at '/exchangeDefaults': additional properties 'sourc' not allowed"),
    # chart-owned keys: the chart sets them from its Services and values, so config: may not
    ("config.redis.url=redis://elsewhere:6379", "at '/config/redis': additional properties 'url' not allowed"),
    ("config.aggregator.shards=4", "at '/config/aggregator': additional properties 'shards' not allowed"),
])
def test_typo_in_values_fails_lint_through_the_schema(setting: str, named: str) -> None:
    result = _helm("lint", "--strict", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


@pytest.mark.parametrize(("setting", "named"), [
    ("config.exchanges.OKX.trades.symbols={BTC-USDT}", "config.exchanges.OKX: OKX is not in exchanges"),
    ("exchangeDefaults.source=simulator", "exchange BINANCE: source must be live"),
])
def test_values_the_chart_cannot_run_fail_rendering(setting: str, named: str) -> None:
    result = _helm("template", "t", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert named in result.stderr


@pytest.mark.parametrize("how", ["--set", "three-exchange"])
def test_three_exchanges_give_three_collector_workloads(how: str, rendered: dict[str, str]) -> None:
    docs = _render(*THREE_EXCHANGES) if how == "--set" else _docs(rendered[how])
    collectors = _component(docs, "collector")
    assert sorted(d["metadata"]["name"] for d in collectors) == [
        "t-collector-binance", "t-collector-coinbase", "t-collector-kraken"]
    assert sorted(_pod(d)["containers"][0]["args"][2] for d in collectors) == ["BINANCE", "COINBASE", "KRAKEN"]
    config = yaml.safe_load(_config_map(docs)["config.yaml"])
    assert sorted(config["exchanges"]) == ["BINANCE", "COINBASE", "KRAKEN"]


def test_aggregator_shards_follow_values_and_the_config(rendered: dict[str, str]) -> None:
    docs = _docs(rendered["all-flags-on"])
    shards = _component(docs, "aggregator")
    assert [d["metadata"]["name"] for d in shards] == ["t-aggregator-0", "t-aggregator-1", "t-aggregator-2"]
    for i, doc in enumerate(shards):
        args = _pod(doc)["containers"][0]["args"]
        assert args[:4] == ["role", "aggregator", "--shard", str(i)]
    assert yaml.safe_load(_config_map(docs)["config.yaml"])["aggregator"]["shards"] == 3


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_container_is_non_root_read_only_with_probes_and_limits(values: str, rendered: dict[str, str]) -> None:
    workloads = _kind(_docs(rendered[values]), *WORKLOADS)
    assert workloads
    for doc in workloads:
        pod = _pod(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]} or container["name"] == "config"
        for container in pod["containers"]:
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys(), doc["metadata"]["name"]
            if container["name"] != "redis":
                assert {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe",
                                                                  "livenessProbe")} == {"/health"}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_objects_are_valid_for_the_pinned_kubernetes_version(values: str, rendered: dict[str, str]) -> None:
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "-"],
                            input=rendered[values], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = _docs(rendered[values])
    crds = _kind(docs, *CRD_KINDS)
    assert result.stdout.count("passed for resource") == len(docs) - len(crds)
    for doc in crds:  # kubernetes-validate has no schema for them: test_monitoring_objects_... checks them
        assert f"Couldn't find schema for kind {doc['kind']}" in result.stdout + result.stderr


def _crd_validate(docs: Docs) -> subprocess.CompletedProcess[str]:
    """Validate ServiceMonitor/PrometheusRule objects against the committed CRD schemas, with the jsonschema
    installed beside kubernetes-validate (the project's own venv does not carry it)."""
    python = Path(tool("kubernetes-validate")).resolve().parent / "python"
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from jsonschema import Draft202012Validator\n"
        "crds, docs = Path(sys.argv[1]), json.load(sys.stdin)\n"
        "bad = 0\n"
        "for doc, name in docs:\n"
        "    schema = json.loads((crds / f'{name}.schema.json').read_text())\n"
        "    Draft202012Validator.check_schema(schema)\n"
        "    for err in Draft202012Validator(schema).iter_errors(doc):\n"
        "        bad += 1\n"
        "        print(doc['kind'], '/'.join(map(str, err.absolute_path)), err.message)\n"
        "    print('valid' if not bad else 'invalid', doc['kind'], doc['metadata']['name'])\n"
        "sys.exit(1 if bad else 0)\n")
    payload = json.dumps([[doc, CRD_KINDS[doc["kind"]]] for doc in docs])
    return subprocess.run([str(python), "-c", script, str(CRDS)], input=payload, capture_output=True, text=True,
                          timeout=60)


def test_monitoring_objects_are_valid_under_the_prometheus_operator_crd_schemas(rendered: dict[str, str]) -> None:
    crds = _kind(_docs(rendered["all-flags-on"]), *CRD_KINDS)
    assert sorted(d["kind"] for d in crds) == ["PrometheusRule", "ServiceMonitor"]
    result = _crd_validate(crds)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("valid ") == 2


def test_crd_schemas_reject_what_the_operator_would(rendered: dict[str, str]) -> None:
    rule, monitor = sorted(_kind(_docs(rendered["all-flags-on"]), *CRD_KINDS), key=lambda d: str(d["kind"]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "1 minute"
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    result = _crd_validate([rule, monitor])
    assert result.returncode == 1
    assert "'1 minute' does not match" in result.stdout
    assert "'intervall' was unexpected" in result.stdout


UPSTREAM_CRD_CHECK = """
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { readFileSync } from "node:fs";
const models = { ServiceMonitor, PrometheusRule };
let bad = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try { new models[doc.kind](doc).validate(); console.log(`valid ${doc.kind} ${doc.metadata.name}`); }
  catch (err) { bad++; console.log(`INVALID ${doc.kind} ${doc.metadata.name}: ${err.message}`); }
}
process.exit(bad ? 1 : 0);
"""


def _upstream_crd_validate(docs: Docs, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The validators npm @kubernetes-models/prometheus-operator generates from the upstream CRDs' openAPI
    schemas (types, patterns, enums, required fields; unknown fields are the committed schemas' part)."""
    modules = node_modules()
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "check.mjs"
    script.write_text(UPSTREAM_CRD_CHECK)
    (tmp_path / "node_modules").symlink_to(modules)  # ESM resolves packages from the script's directory up
    return subprocess.run([tool("node"), str(script)], input=json.dumps(docs), capture_output=True, text=True,
                          timeout=60)


def test_monitoring_objects_pass_the_upstream_crd_validators_which_reject_a_bad_interval(
        rendered: dict[str, str], tmp_path: Path) -> None:
    crds = _kind(_docs(rendered["all-flags-on"]), *CRD_KINDS)
    good = _upstream_crd_validate(crds, tmp_path / "good")
    assert good.returncode == 0 and good.stdout.count("valid ") == 2, good.stdout + good.stderr
    monitor = next(d for d in crds if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    bad = _upstream_crd_validate([monitor], tmp_path / "bad")
    assert bad.returncode == 1 and "interval must match pattern" in bad.stdout, bad.stdout + bad.stderr


def test_flags_off_render_no_optional_objects(rendered: dict[str, str]) -> None:
    kinds = {d["kind"] for d in _docs(rendered["default"])}
    assert kinds == {"ConfigMap", "Deployment", "Service", "ServiceAccount", "StatefulSet"}
    assert not _component(_docs(rendered["default"]), "gateway")


def test_all_flags_on_render_every_optional_object(rendered: dict[str, str]) -> None:
    docs = _docs(rendered["all-flags-on"])
    components = {"bus", "collector", "aggregator", "featurizer", "gateway", "redis"}
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        objects = _kind(docs, kind)
        assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in objects} == components
    (budget,) = [d for d in _kind(docs, "PodDisruptionBudget") if d["metadata"]["name"] == "t-collector"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "collector"
    (gateway_svc,) = [d for d in _kind(docs, "Service") if d["metadata"]["name"] == "t-gateway-consumers"]
    assert gateway_svc["spec"]["type"] == "LoadBalancer"
    (monitor,) = _kind(docs, "ServiceMonitor")
    metrics_services = [d for d in _kind(docs, "Service") if d["metadata"]["labels"].get("data-feed/metrics")]
    assert {s["metadata"]["name"] for s in metrics_services} == {d["metadata"]["name"]
                                                                for d in _kind(docs, "Deployment")}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(selector.items() <= s["metadata"]["labels"].items() for s in metrics_services)


def test_prometheus_rule_and_dashboards_carry_the_generated_observability(rendered: dict[str, str]) -> None:
    docs = _docs(rendered["all-flags-on"])
    (rule,) = _kind(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "observability" / "alerts.yaml").read_text())["groups"]
    dashboards = [d for d in _kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    generated = {p.name: json.loads(p.read_text()) for p in (ROOT / "observability" / "dashboards").glob("*.json")}
    assert len(generated) >= 4
    assert {name: json.loads(text) for d in dashboards for name, text in d["data"].items()} == generated


def test_chart_copies_and_values_schema_equal_what_the_code_generates(tmp_path: Path) -> None:
    check = [sys.executable, str(ROOT / "helm" / "generate.py"), "--check"]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    chart = tmp_path / "data-feed"
    shutil.copytree(CHART, chart)
    schema = json.loads((chart / "values.schema.json").read_text())
    del schema["$defs"]["LakeConfig"]["properties"]["slice_seconds"]
    (chart / "values.schema.json").write_text(json.dumps(schema))
    with (chart / "files" / "alerts.yaml").open("a") as f:
        f.write("# edited by hand\n")
    result = subprocess.run([*check, "--chart", str(chart)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "values.schema.json" in result.stderr and "alerts.yaml" in result.stderr


def _value_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every chart value's dotted path in the values schema (resources, config: and exchangeDefaults: whole)."""
    properties = node.get("properties")
    if not properties or prefix.rsplit(".", 1)[-1] in ("resources", "config", "exchangeDefaults"):
        yield prefix
        return
    for key, child in properties.items():
        yield from _value_paths(child, f"{prefix}.{key}" if prefix else key)


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    paths = list(_value_paths(json.loads((CHART / "values.schema.json").read_text())))
    assert len(paths) > 50
    assert [p for p in paths if f"| `{p}` |" not in readme] == []


def test_service_account_carries_the_irsa_role_and_every_pod_uses_it(rendered: dict[str, str]) -> None:
    docs = _docs(rendered["all-flags-on"])
    (account,) = _kind(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/data-feed-writer")
    assert {_pod(d)["serviceAccountName"] for d in _kind(docs, "Deployment")} == {account["metadata"]["name"]}
    assert "annotations" not in _kind(_docs(rendered["default"]), "ServiceAccount")[0]["metadata"]


def test_secrets_are_referenced_never_rendered(rendered: dict[str, str]) -> None:
    for values in ("all-flags-on", "external-redis"):
        docs = _docs(rendered[values])
        assert not _kind(docs, "Secret")
        for doc in _kind(docs, "Deployment"):
            pod = _pod(doc)
            secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            if values == "external-redis":
                assert secrets == {"data-feed-redis"}
            else:
                assert "data-feed-database" in secrets
                assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "data-feed-aws"}}]
            assert all("valueFrom" not in e for c in pod["containers"] for e in c.get("env", []))


# -- the config the pods run with -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_config_map_loads_with_data_feeds_own_load_config(
        values: str, rendered: dict[str, str], tmp_path: Path) -> None:
    docs = _docs(rendered[values])
    path = tmp_path / "config.yaml"
    path.write_text(_config_map(docs)["config.yaml"])
    cfg = load_config(path)
    collectors = _component(docs, "collector")
    assert sorted(cfg.exchanges) == sorted(_pod(d)["containers"][0]["args"][2] for d in collectors)
    assert cfg.aggregator.shards == len(_component(docs, "aggregator"))
    assert (cfg.bus.publish_endpoint, cfg.bus.subscribe_endpoint) == ("tcp://t-bus:5556", "tcp://t-bus:5557")
    (bus_svc,) = [d for d in _kind(docs, "Service") if d["metadata"]["name"] == "t-bus"]
    assert {p["port"] for p in bus_svc["spec"]["ports"]} == {9100, 5556, 5557}
    assert cfg.featurizer.enabled == bool(_component(docs, "featurizer"))
    assert cfg.gateway.enabled == bool(_component(docs, "gateway"))
    if values == "external-redis":
        assert cfg.redis.url is None  # from the Secret, by the config init container
        assert not _component(docs, "redis")
    else:
        assert cfg.redis.url == "redis://t-redis:6379/0"
        (redis_svc,) = [d for d in _kind(docs, "Service") if d["metadata"]["name"] == "t-redis"]
        assert redis_svc["spec"]["ports"][0]["port"] == 6379


def test_external_redis_url_goes_straight_into_the_config(tmp_path: Path) -> None:
    docs = _render("--set", "redis.external.url=redis://cache.example:6380/2")
    path = tmp_path / "config.yaml"
    path.write_text(_config_map(docs)["config.yaml"])
    assert load_config(path).redis.url == "redis://cache.example:6380/2"
    assert not _component(docs, "redis")


def _init_config(doc: dict[str, Any], docs: Docs, tmp: Path, secrets: dict[str, str], *extra: str) -> Path:
    """Run the pod's config init container's command here: the ConfigMap and Secret files laid under tmp;
    ``extra`` arguments appended."""
    pod = _pod(doc)
    (init,) = pod["initContainers"]
    data = _config_map(docs)
    etc = tmp / "etc"
    etc.mkdir(exist_ok=True)
    for key, text in data.items():
        (etc / key).write_text(text)
    for volume in pod["volumes"]:
        if "secret" in volume and volume["name"] in ("redis-url", "database-url"):
            key = volume["secret"]["items"][0]["key"]
            (tmp / volume["name"]).mkdir(exist_ok=True)
            (tmp / volume["name"] / key).write_text(secrets[volume["secret"]["secretName"]] + "\n")
    out = tmp / f"{doc['metadata']['name']}.yaml"
    command = [arg.replace("/etc/data-feed/", f"{etc}/").replace(RENDERED_CONFIG, str(out))
               .replace("/run/secrets/data-feed/", f"{tmp}/") for arg in init["command"]]
    assert command[:2] == ["python", f"{etc}/render-config.py"]
    # in this process rather than a new interpreter per pod: the same script, the same argv, much faster
    script = types.ModuleType("render_config")
    exec(compile(data["render-config.py"], command[1], "exec"), script.__dict__)
    assert script.main([*command[2:], *extra]) == 0
    return out


SECRETS = {"data-feed-redis": "redis://:s3cret@redis.internal:6379/3",
           "data-feed-database": "sqlite:////var/lib/data-feed/permissions.db"}


@pytest.mark.parametrize("values", ["external-redis", "all-flags-on"])
def test_config_init_container_fills_secrets_and_each_pods_own_keys(
        values: str, rendered: dict[str, str], tmp_path: Path) -> None:
    docs = _docs(rendered[values])
    for doc in _kind(docs, "Deployment"):
        cfg: Config = load_config(_init_config(doc, docs, tmp_path, SECRETS))
        args = _pod(doc)["containers"][0]["args"]
        assert args[args.index("--config") + 1] == RENDERED_CONFIG
        if values == "external-redis":
            assert cfg.redis.url == SECRETS["data-feed-redis"]
        else:
            assert cfg.redis.url == "redis://t-redis:6379/0"
            assert cfg.database.url == SECRETS["data-feed-database"]
            assert cfg.lake.s3 is not None and cfg.lake.s3.bucket == "data-feed-lake"
        binds = (cfg.bus.publish_endpoint, cfg.bus.subscribe_endpoint)
        if doc["metadata"]["name"] == "t-bus":
            assert binds == ("tcp://0.0.0.0:5556", "tcp://0.0.0.0:5557")
        else:
            assert binds == ("tcp://t-bus:5556", "tcp://t-bus:5557")
    rendered_text = rendered[values]
    assert all(secret not in rendered_text for secret in SECRETS.values())


def test_config_init_container_stops_the_pod_when_its_secret_is_empty(
        rendered: dict[str, str], tmp_path: Path) -> None:
    docs = _docs(rendered["external-redis"])
    with pytest.raises(SystemExit, match=r"redis\.url: .* is empty"):
        _init_config(_component(docs, "collector")[0], docs, tmp_path, {"data-feed-redis": ""})


# -- the pods' arguments, run for real -------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _http_ok(url: str, proc: subprocess.Popen[str] | None = None) -> Callable[[], bool]:
    """True once ``url`` answers 200, or once ``proc`` has exited (the caller then says why)."""
    def check() -> bool:
        if proc is not None and proc.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False
    return check


Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture()
def process(tmp_path: Path) -> Iterator[Start]:
    """``start(argv, name, cwd=None)``: a process logging to tmp_path/NAME.log, terminated at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], name: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        with (tmp_path / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_every_pod_but_the_collectors_starts_from_the_charts_config_and_reports_ok(
        tmp_path: Path, redis_url: str, process: Start) -> None:
    """The bus, aggregator, featurizer and gateway pods' init and main containers, run here against a real
    Redis (collectors are left out: they dial live exchanges); then a message through the bus's ports.
    Stand-ins for what Kubernetes provides: the run dir and /data emptyDirs are directories under tmp, the
    bus Service's name is 127.0.0.1, and each pod gets its own http port (pods have their own IPs)."""
    pub, sub, gateway, *http = _free_ports(7)
    docs = _render("--set", f"redis.external.url={redis_url}", "--set", f"bus.publishPort={pub}",
                   "--set", f"bus.subscribePort={sub}", "--set", "gateway.enabled=true",
                   "--set", f"gateway.port={gateway}", "--set", "aggregator.shards=2")
    pods = [d for d in _kind(docs, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] != "collector"]
    assert [d["metadata"]["name"] for d in pods] == ["t-bus", "t-aggregator-0", "t-aggregator-1", "t-featurizer",
                                                     "t-gateway"]
    health = []
    for doc, port in zip(pods, http, strict=False):
        name = doc["metadata"]["name"]
        (tmp_path / name).mkdir()
        stand_ins = ["--set", f"spawner.run_dir={tmp_path / name / 'run'}"]
        if name != "t-bus":
            stand_ins += ["--set", f"bus.publish_endpoint=tcp://127.0.0.1:{pub}",
                          "--set", f"bus.subscribe_endpoint=tcp://127.0.0.1:{sub}"]
        config = _init_config(doc, docs, tmp_path / name, {}, *stand_ins)
        args = [str(config) if a == RENDERED_CONFIG else a for a in _pod(doc)["containers"][0]["args"]]
        args[args.index("--http-port") + 1] = str(port)
        proc = process([str(ROOT / ".venv" / "bin" / "data-feed"), *args], name, cwd=tmp_path / name)
        health.append((name, port, proc))
    for name, port, proc in health:
        wait_for(_http_ok(f"http://127.0.0.1:{port}/health", proc), 180, f"{name}'s /health")
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert json.load(response)["status"] == "ok", name
    _assert_the_bus_passes_messages(pub, sub)


def _assert_the_bus_passes_messages(pub: int, sub: int) -> None:
    """The bus pod binds the ports its Service targets: what is published on one arrives at the other."""
    ctx = zmq.Context()
    try:
        subscriber = ctx.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.connect(f"tcp://127.0.0.1:{sub}")
        publisher = ctx.socket(zmq.PUB)
        publisher.connect(f"tcp://127.0.0.1:{pub}")

        def received() -> bytes | None:
            publisher.send(b"through the bus Service")
            return subscriber.recv() if subscriber.poll(200) else None

        assert wait_for(received, 30, "a message from the publish port at the subscribe port") == (
            b"through the bus Service")
    finally:
        ctx.destroy(linger=0)


def test_redis_statefulset_arguments_start_redis_append_only(
        rendered: dict[str, str], tmp_path: Path, process: Start) -> None:
    (stateful,) = _kind(_docs(rendered["default"]), "StatefulSet")
    assert stateful["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = _pod(stateful)["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    (port,) = _free_ports(1)
    args = [str(tmp_path) if a == "/data" else str(port) if a == "6379" else a for a in container["args"]]
    assert args[0] == "redis-server"
    process([shutil.which("redis-server") or "redis-server", *args[1:], "--bind", "127.0.0.1"], "redis")
    client = redis.Redis(port=port)

    def pong() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(pong, 30, "the built-in Redis's arguments to start redis-server")
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    client.xadd("s", {"k": "v"})
    wait_for(lambda: any(tmp_path.rglob("*.aof")), 30, "an AOF file in the PVC's directory")
    client.close()


# -- checkov ------------------------------------------------------------------------------------------------------


def test_checkov_passes_on_the_chart_and_every_rendered_value_set_with_reasoned_skips(
        rendered: dict[str, str], tmp_path: Path) -> None:
    """checkov's helm framework on the chart (its own render: default values; chart-wide skips in the
    commented helm/data-feed/.checkov.yaml) and its kubernetes framework on each value set's render; both
    at once, they take most of this file's time."""
    for name, text in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    env = dict(os.environ, PATH=f"{Path(tool('helm')).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    runs = {framework: subprocess.Popen([tool("checkov"), "-d", str(target), "--framework", framework, "--quiet",
                                         "--compact"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env)
            for framework, target in (("helm", CHART), ("kubernetes", tmp_path))}
    for framework, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{framework}: {out[-4000:]}{err[-2000:]}"
        assert "Failed checks: 0" in out and "Passed checks: " in out, framework
    skips = [(key, value) for text in rendered.values() for doc in _docs(text)
             for key, value in (doc["metadata"].get("annotations") or {}).items() if key.startswith("checkov.io/skip")]
    assert skips
    for key, value in skips:
        check, _, reason = value.partition("=")
        assert check.startswith("CKV_K8S_") and len(reason) > 40, (key, value)
    chart_wide = yaml.safe_load((CHART / ".checkov.yaml").read_text())["skip-check"]
    commented = (CHART / ".checkov.yaml").read_text()
    assert all(f"# {check} " in commented for check in chart_wide)


def test_a_long_release_name_fails_naming_the_object_and_fullname_override_shortens_every_name() -> None:
    """Helm allows release names of 53 characters; with the longest suffix the chart makes
    (``-collector-binance-futures``) that passes Kubernetes' 63. Rendering fails with the name and the fix
    instead of objects the API server refuses; ``fullnameOverride`` is the fix, and every name fits."""
    release = "r" * 53
    flags = ["-f", str(VALUE_SETS["all-flags-on"]), "--set", "exchanges={BINANCE,BINANCE_FUTURES}"]
    failed = subprocess.run([tool("helm"), "template", release, str(CHART), *flags], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0
    assert f"{release}-collector-binance-futures would be 79 characters, over Kubernetes' 63" in failed.stderr
    assert "set fullnameOverride to a prefix of at most 37 characters" in failed.stderr
    result = subprocess.run([tool("helm"), "template", release, str(CHART), *flags, "--set", "fullnameOverride=df"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = _docs(result.stdout)
    names = [d["metadata"]["name"] for d in docs]
    assert "df-collector-binance-futures" in names and "df-config" in names
    assert all(len(n) <= 63 and (n.startswith("df-") or n == "df") for n in names), names
    assert all(d["metadata"]["labels"]["app.kubernetes.io/instance"] == release for d in docs)  # still the release
    wrong = _helm("template", "t", str(CHART), "--set", "fullnameOverride=Not_A_Name")
    assert wrong.returncode != 0 and "fullnameOverride" in wrong.stderr
