"""The dashboards: React panel types only at the current schema version, every query through the datasource
variable, panels on the grid without overlap, the drill-down's exchange and symbol variables, and every metric
a panel or a rule names defined by data_feed.observability.metrics."""

from __future__ import annotations

import re

import pytest

from data_feed.observability.alerts import rules
from data_feed.observability.dashboards import DASHBOARDS
from data_feed.observability.grafana import (
    DATASOURCE,
    GRID_COLUMNS,
    PANEL_TYPES,
    SCHEMA_VERSION,
    Panel,
    Query,
    Row,
    _layout,
    timeseries,
)
from tests.observability.test_metrics import defined_metrics, histograms

METRIC = re.compile(r"\b(data_feed_[a-z_]+|up)\b(?![a-z_]*\()")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def rendered() -> dict[str, dict[str, object]]:
    return {name: build().render() for name, build in DASHBOARDS.items()}


def test_every_panel_is_a_react_panel_at_the_current_schema_version() -> None:
    for name, dash in rendered().items():
        assert dash["schemaVersion"] == SCHEMA_VERSION, name
        kinds = {p["type"] for p in dash["panels"]}  # type: ignore[attr-defined]
        assert kinds <= PANEL_TYPES | {"row"}, (name, kinds)
        assert not kinds & {"graph", "singlestat", "table-old", "grafana-piechart-panel"}


def test_a_panel_type_outside_the_react_set_is_refused() -> None:
    with pytest.raises(ValueError, match="graph"):
        Panel("graph", "t", "d", (Query("up"),))


def test_every_query_goes_through_the_datasource_variable() -> None:
    for build in DASHBOARDS.values():
        dash = build().render()
        assert dash["templating"]["list"][0]["name"] == "datasource"  # type: ignore[index]
        for panel in dash["panels"]:  # type: ignore[attr-defined]
            for target in panel.get("targets", []):
                assert panel["datasource"] == target["datasource"] == DATASOURCE
                assert target["expr"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    for name, dash in rendered().items():
        taken: set[tuple[int, int]] = set()
        for panel in dash["panels"]:  # type: ignore[attr-defined]
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS, (name, panel["title"])
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, (name, panel["title"])
            taken |= cells


def test_panels_wrap_at_the_grid_width_and_a_row_starts_a_band() -> None:
    wide = timeseries("a", "", Query("up"), width=16)
    grid = [p["gridPos"] for p in _layout((wide, wide, Row("r"), wide))]
    assert grid == [{"x": 0, "y": 0, "w": 16, "h": 8}, {"x": 0, "y": 8, "w": 16, "h": 8},
                    {"x": 0, "y": 16, "w": 24, "h": 1}, {"x": 0, "y": 17, "w": 16, "h": 8}]


def test_the_exchange_dashboard_drills_down_by_exchange_and_symbol() -> None:
    dash = rendered()["exchange"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}  # type: ignore[index]
    assert {"exchange", "symbol"} <= set(variables)
    assert "$exchange" in variables["symbol"]["definition"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]  # type: ignore[attr-defined]
    assert all("$exchange" in e or "$symbol" in e or "data_feed_spill_max_bytes" in e for e in exprs)
    assert any("$symbol" in e for e in exprs)


def known_series() -> set[str]:
    names = set(defined_metrics()) | {"up"}
    return names | {h + suffix for h in histograms() for suffix in HISTOGRAM_SERIES}


def test_every_metric_a_panel_or_rule_names_is_defined() -> None:
    exprs = [t["expr"] for d in rendered().values() for p in d["panels"]  # type: ignore[attr-defined]
             for t in p.get("targets", [])]
    exprs += [r["expr"] for g in rules()["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used - known_series() == set()
    # histograms are read through their buckets or sums, never by the bare family name
    assert not used & histograms()
