"""The alert rules: promtool accepts them (and the fast copy the live test uses), its unit tests have a case
that fires and one that does not for every alert, and every alert has a for, a severity, a summary, a
description and a runbook_url to a section of docs/runbooks.md that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from data_feed.observability.__main__ import alerts_yaml
from data_feed.observability.alerts import FAST, alert_names, rules
from tests.conftest import ROOT
from tests.observability.tools import require

RULES = ROOT / "observability" / "alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_their_fast_test_copy(tmp_path: Path) -> None:
    fast = tmp_path / "fast.yaml"
    fast.write_text(alerts_yaml(rules(FAST)))
    proc = promtool("check", "rules", str(RULES), str(fast))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(f"SUCCESS: {len(alert_names())} rules found") == 2, proc.stdout


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    proc = promtool("test", "rules", str(UNIT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for name in alert_names():
        assert True in cases.get(name, []), f"{name}: no unit test where it fires"
        assert False in cases.get(name, []), f"{name}: no unit test where it does not fire"


def committed_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_has_for_severity_summary_description_and_a_runbook_section() -> None:
    sections = {heading.lower() for heading in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.MULTILINE)}
    for rule in committed_rules():
        name = rule["alert"]
        assert rule["for"] and rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/runbooks.md" and anchor == name.lower() and anchor in sections, name
    assert sections == {name.lower() for name in alert_names()}, "a runbook section without its alert"


def test_the_fast_copy_differs_from_the_rules_in_for_and_the_freshness_margin_only() -> None:
    slow, fast = rules(), rules(FAST)
    for a, b in zip(slow["groups"], fast["groups"], strict=True):
        for x, y in zip(a["rules"], b["rules"], strict=True):
            assert y["for"] == FAST.for_override
            if x["alert"] != "DataFeedLakeStale":
                assert {**x, "for": None} == {**y, "for": None}, x["alert"]
