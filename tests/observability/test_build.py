"""The committed dashboards and rules are what ``make dashboards`` builds from the code."""

from __future__ import annotations

from pathlib import Path

from data_feed.observability.__main__ import main, render_files
from tests.conftest import ROOT

OUT = ROOT / "observability"


def test_the_committed_dashboards_and_rules_are_what_the_builder_makes() -> None:
    files = render_files()
    assert {"alerts.yaml", "dashboards/overview.json", "dashboards/exchange.json", "dashboards/lake.json",
            "dashboards/features.json"} == set(files)
    stale = [rel for rel, text in files.items() if not (OUT / rel).exists() or (OUT / rel).read_text() != text]
    assert not stale, f"out of date, run `make dashboards`: {stale}"
    assert sorted(p.name for p in (OUT / "dashboards").iterdir()) == sorted(Path(r).name for r in files if "/" in r)


def test_check_mode_names_what_differs_and_writes_nothing(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    (tmp_path / "alerts.yaml").write_text("groups: []\n")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert (tmp_path / "alerts.yaml").read_text() == "groups: []\n"
    assert main(["--out", str(tmp_path)]) == 0 and main(["--out", str(tmp_path), "--check"]) == 0
