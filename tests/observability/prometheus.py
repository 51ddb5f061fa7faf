"""A real Prometheus server (the Debian package's binary) for tests: scrapes one target, evaluates a rules file,
answers PromQL over its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import wait_for

READY_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    binary: str
    root: Path
    scrape_seconds: float
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, target: str, rules_text: str, job: str = "data-feed") -> Prometheus:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "rules.yaml").write_text(rules_text)
        interval = f"{round(self.scrape_seconds * 1000)}ms"
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "rule_files": ["rules.yaml"],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}]}
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        log = open(self.root / "prometheus.log", "wb")  # noqa: SIM115 - the server's whole life
        self.proc = subprocess.Popen([self.binary, f"--config.file={self.root / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.root / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=log, stderr=log)
        wait_for(self._ready, READY_TIMEOUT_SECONDS, "Prometheus to be ready", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, (self.root / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of an API answer; AssertionError with Prometheus's error otherwise."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
