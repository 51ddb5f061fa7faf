"""Grafana dashboards as plain data: panels, queries and variables, rendered to the classic dashboard JSON model.

Only React panel types (``PANEL_TYPES``): Grafana removed the Angular ``graph`` and ``singlestat``
panels. Panels flow left to right on the 24-column grid and wrap; a ``Row`` starts a new band. Every
panel and query names its datasource as the ``datasource`` variable, so one file serves any
Prometheus. The JSON is deterministic (ids by position, sorted keys): the committed files are
compared with what this builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 42  # the classic model of current Grafana (12.x); older files are migrated up, not down
PANEL_TYPES = frozenset({"timeseries", "stat", "table", "bargauge"})
GRID_COLUMNS = 24
ROW_HEIGHT = 1
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}
REFRESH = "30s"
TIME_RANGE = {"from": "now-3h", "to": "now"}
Thresholds = tuple[tuple[float, str], ...]  # (from value, colour) above the panel's base colour


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    kind: str  # one of PANEL_TYPES
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: Thresholds = ()
    stacked: bool = False
    base: str = "green"  # the colour below the first threshold
    mappings: tuple[tuple[int, str], ...] = ()  # value -> text shown

    def __post_init__(self) -> None:
        if self.kind not in PANEL_TYPES:
            raise ValueError(f"panel {self.title!r}: {self.kind!r} is not one of {sorted(PANEL_TYPES)}")
        if not 0 < self.width <= GRID_COLUMNS:
            raise ValueError(f"panel {self.title!r}: width {self.width} outside 1..{GRID_COLUMNS}")


@dataclass(frozen=True)
class Row:
    title: str


@dataclass(frozen=True)
class Variable:
    """A query variable over label values: ``query`` is a ``label_values(...)`` expression."""

    name: str
    label: str
    query: str
    multi: bool = False

    def render(self) -> dict[str, Any]:
        return {
            "type": "query", "name": self.name, "label": self.label, "datasource": DATASOURCE,
            "definition": self.query, "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [],
            "current": {}, "multi": self.multi, "includeAll": self.multi,
            **({"allValue": ".*"} if self.multi else {}),
            "query": {"qryType": 1, "query": self.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        }


def timeseries(title: str, description: str, *queries: Query, unit: str = "short", width: int = 12,
               stacked: bool = False, thresholds: Thresholds = ()) -> Panel:
    return Panel("timeseries", title, description, queries, unit, width, thresholds=thresholds, stacked=stacked)


def stat(title: str, description: str, *queries: Query, unit: str = "short", width: int = 6,
         thresholds: Thresholds = ()) -> Panel:
    return Panel("stat", title, description, queries, unit, width, height=5, thresholds=thresholds)


def up_stat(title: str, description: str, query: Query, width: int = 6) -> Panel:
    """1 (up, green) or 0 (down, red) per series."""
    return Panel("stat", title, description, (query,), width=width, height=5, thresholds=((1.0, "green"),),
                 base="red", mappings=((1, "up"), (0, "down")))


def table(title: str, description: str, *queries: Query, unit: str = "short", width: int = 12) -> Panel:
    return Panel("table", title, description, queries, unit, width)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    items: tuple[Panel | Row, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("data-feed",)

    def panels(self) -> list[Panel]:
        return [item for item in self.items if isinstance(item, Panel)]

    def render(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
            "timezone": "utc", "refresh": REFRESH, "time": TIME_RANGE, "timepicker": {}, "fiscalYearStartMonth": 0,
            "liveNow": False, "weekStart": "", "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": list(self.tags), "asDropdown": True, "title": "data-feed",
                       "includeVars": False, "keepTime": True}],
            "templating": {"list": [_datasource_variable(), *(v.render() for v in self.variables)]},
            "panels": _layout(self.items),
        }


def _datasource_variable() -> dict[str, Any]:
    return {"type": "datasource", "name": DATASOURCE_VARIABLE, "label": "Prometheus", "query": "prometheus",
            "refresh": 1, "hide": 0, "regex": "", "options": [], "current": {}}


def _layout(items: tuple[Panel | Row, ...]) -> list[dict[str, Any]]:
    """Grid positions left to right, wrapping at the grid's width; a row starts a new band."""
    out: list[dict[str, Any]] = []
    x = y = band = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y, x, band = y + band, 0, 0
            out.append({"type": "row", "id": panel_id, "title": item.title, "collapsed": False, "panels": [],
                        "gridPos": {"x": 0, "y": y, "w": GRID_COLUMNS, "h": ROW_HEIGHT}})
            y += ROW_HEIGHT
            continue
        if x + item.width > GRID_COLUMNS:
            y, x, band = y + band, 0, 0
        out.append(_panel(item, panel_id, {"x": x, "y": y, "w": item.width, "h": item.height}))
        x, band = x + item.width, max(band, item.height)
    return out


def _panel(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    steps = [{"color": panel.base, "value": None}] + [{"color": c, "value": v} for v, c in panel.thresholds]
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps},
                                "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
                                "mappings": _mappings(panel.mappings)}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False, "stacking": {"mode": "normal" if panel.stacked else "none",
                                                               "group": "A"},
                              "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"}}
    return {"type": panel.kind, "id": panel_id, "title": panel.title, "description": panel.description,
            "datasource": DATASOURCE, "gridPos": grid, "targets": _targets(panel),
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": _options(panel.kind)}


def _mappings(pairs: tuple[tuple[int, str], ...]) -> list[dict[str, Any]]:
    if not pairs:
        return []
    return [{"type": "value", "options": {str(v): {"text": text, "index": i} for i, (v, text) in enumerate(pairs)}}]


def _targets(panel: Panel) -> list[dict[str, Any]]:
    instant = panel.kind == "table"
    return [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend,
             "editorMode": "code", "range": not instant, "instant": instant,
             "format": "table" if instant else "time_series"} for i, q in enumerate(panel.queries)]


def _options(kind: str) -> dict[str, Any]:
    if kind == "timeseries":
        return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if kind == "stat":
        return {"reduceOptions": reduce, "colorMode": "background", "graphMode": "area", "textMode": "auto",
                "orientation": "auto", "justifyMode": "auto", "wideLayout": True, "showPercentChange": False}
    return {"reduceOptions": reduce, "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
