"""Metrics an operator charts exist from the first scrape, with the labels the README says, and the README's
table is the list of what the code defines: one list, checked both ways."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge

from data_feed import metrics
from data_feed.cache import configured_streams
from data_feed.config import parse_config
from tests.conftest import ROOT
from tests.harness import Run, pipeline_config

ROW = re.compile(r"^\| `(data_feed_[a-z_]+)` \| ([^|]*) \|")


def readme_metrics() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Metrics"):text.index("## Benchmarks")]
    return {m.group(1): {label.strip(" `") for label in m.group(2).split(",") if label.strip()}
            for m in map(ROW.match, table.splitlines()) if m}


def defined_metrics() -> dict[str, set[str]]:
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge):
            name = value._name + ("_total" if isinstance(value, Counter) else "")
            out[name] = set(value._labelnames)
    return out


def test_the_readme_lists_every_metric_the_code_defines_with_its_labels() -> None:
    assert readme_metrics() == defined_metrics()


def scrape(run: Run) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port()}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.slow
def test_every_listed_metric_is_served_from_the_first_scrape_for_every_known_label_set(tmp_path: Path) -> None:
    run = Run(tmp_path, pipeline_config(tmp_path)).start(wait_for_lake=False)
    try:
        text = scrape(run)
    finally:
        assert run.stop() == 0, run.err[-3000:]
    served = {line.split("{")[0] for line in text.splitlines() if line.startswith("data_feed_")}
    assert set(readme_metrics()) <= served, set(readme_metrics()) - served
    cfg = parse_config(run.config, "test")
    for key in configured_streams(cfg):
        assert f'data_feed_consumer_lag{{stream="{key}"}}' in text, key
        exchange, channel = key.split(":")[2:]
        assert f'data_feed_gaps_total{{channel="{channel}",exchange="{exchange}",reason="restart"}}' in text, key
        assert f'data_feed_rows_written_total{{channel="{channel}",exchange="{exchange}"}}' in text, key
    for role in ("aggregator", "featurizer", "simulator", "collector BINANCE", "collector COINBASE", "redis"):
        assert f'data_feed_role_restarts_total{{role="{role}"}}' in text, role
    assert 'data_feed_sim_faults_total{exchange="BINANCE",fault="stall"}' in text
