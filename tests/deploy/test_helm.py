"""The Helm chart under the real helm, kubernetes-validate and its values schema."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import tool

CHART = Path(__file__).resolve().parents[2] / "helm" / "data-feed"
KUBERNETES_VERSION = "1.31.0"
THREE_EXCHANGES = ["--set", "exchanges={BINANCE,COINBASE,KRAKEN}"]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=60)


def _render(*args: str) -> list[dict[str, Any]]:
    result = _helm("template", "t", str(CHART), *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_chart_passes_helm_lint_strict() -> None:
    result = _helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_typo_in_values_fails_lint_through_the_schema() -> None:
    result = _helm("lint", "--strict", str(CHART), "--set", "imagee.tag=x")
    assert result.returncode != 0
    assert "imagee" in result.stdout + result.stderr


def test_three_exchanges_give_three_collector_deployments() -> None:
    collectors = [d for d in _render(*THREE_EXCHANGES) if d["kind"] == "Deployment"
                  and d["metadata"]["labels"]["app.kubernetes.io/component"] == "collector"]
    assert sorted(d["metadata"]["name"] for d in collectors) == [
        "t-collector-binance", "t-collector-coinbase", "t-collector-kraken"]


def test_every_container_is_non_root_read_only_with_probes_and_limits() -> None:
    for doc in _render(*THREE_EXCHANGES):
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


def test_rendered_objects_are_valid_for_the_pinned_kubernetes_version() -> None:
    rendered = _helm("template", "t", str(CHART), *THREE_EXCHANGES)
    assert rendered.returncode == 0, rendered.stderr
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "-"],
                            input=rendered.stdout, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 4
