"""Metrics an operator charts exist from the first scrape, with the labels the README says, and the README's
table is the list of what the code defines: one list, checked both ways. The same run logs in JSON: every line
of the spawner and of every role is one JSON object."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from data_feed.cache.streams import configured_streams
from data_feed.contracts.config import parse_config
from data_feed.observability import metrics
from tests.conftest import ROOT
from tests.harness import Run, pipeline_config, wait_for

ROW = re.compile(r"^\| `(data_feed_[a-z_]+)` \| ([^|]*) \|")
HISTOGRAM_LABEL = "le"
GATEWAY_PREFIX = "data_feed_gateway_"
ROLE_LOGS = ("aggregator", "featurizer", "simulator", "collector-BINANCE", "collector-COINBASE")


def readme_metrics() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Metrics"):text.index("## Benchmarks")]
    return {m.group(1): {label.strip(" `") for label in m.group(2).split(",") if label.strip()}
            for m in map(ROW.match, table.splitlines()) if m}


def defined_metrics() -> dict[str, set[str]]:
    """Every metric of ``observability.metrics``: the roles' own and those the spawner computes at scrape time."""
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            name = value._name + ("_total" if isinstance(value, Counter) else "")
            out[name] = set(value._labelnames)
        elif isinstance(value, metrics.ScrapeGauge):
            out[value.name] = set(value.labelnames)
    return out


def histograms() -> set[str]:
    return {value._name for value in vars(metrics).values() if isinstance(value, Histogram)}


def test_the_readme_lists_every_metric_the_code_defines_with_its_labels() -> None:
    assert readme_metrics() == defined_metrics()


def scrape(run: Run) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port()}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def served(text: str) -> dict[str, list[Sample]]:
    """Samples by the name the README gives their metric (a histogram's buckets, sum and count under its own)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(family.name if family.type == "histogram" else sample.name, []).append(sample)
    return out


@pytest.mark.slow
def test_every_listed_metric_is_served_from_the_first_scrape_for_every_known_label_set_and_logs_are_json(
        tmp_path: Path) -> None:
    run = Run(tmp_path, pipeline_config(tmp_path), extra_args=["--log-format", "json"]).start(wait_for_lake=False)
    try:
        text = scrape(run)
        wait_for(lambda: all((run.run_dir / "logs" / f"{name}.log").stat().st_size for name in ROLE_LOGS), 90,
                 "every role's first log line")
    finally:
        assert run.stop() == 0, run.err[-3000:]
    samples = served(text)
    for name, labels in readme_metrics().items():
        if name.startswith(GATEWAY_PREFIX):  # the gateway role's own (tests/access/test_role.py); off by default
            continue
        assert samples.get(name), f"{name} is not served"
        for sample in samples[name]:
            assert set(sample.labels) - {HISTOGRAM_LABEL} == labels, (name, sample.labels)
    assert all(any(s.labels.get(HISTOGRAM_LABEL) == "+Inf" for s in samples[h]) for h in histograms())
    assert_known_label_sets(run, text)
    assert_json_logs(run)


def assert_known_label_sets(run: Run, text: str) -> None:
    cfg = parse_config(run.config, "test")
    for key in configured_streams(cfg):
        assert f'data_feed_consumer_lag{{stream="{key}"}}' in text, key
        assert f'data_feed_stream_oldest_pending_age_seconds{{stream="{key}"}}' in text, key
        exchange, channel = key.split(":")[2:]
        assert f'data_feed_gaps_total{{channel="{channel}",exchange="{exchange}",reason="restart"}}' in text, key
        assert f'data_feed_rows_written_total{{channel="{channel}",exchange="{exchange}"}}' in text, key
        assert f'data_feed_lake_partition_files_max{{channel="{channel}",exchange="{exchange}"}}' in text, key
    for channel, exchange, symbol in metrics.lake_symbols(cfg):
        labels = f'channel="{channel}",exchange="{exchange}",symbol="{symbol}"'
        assert f"data_feed_lake_freshness_seconds{{{labels}}}" in text, labels
        assert f"data_feed_symbol_rows_written_total{{{labels}}}" in text, labels
    for exchange, ex in cfg.exchanges.items():
        assert f'data_feed_exchange_silence_seconds{{exchange="{exchange}"}}' in text, exchange
        for channel, ch in ex.channels().items():
            assert f'data_feed_receipt_latency_seconds_count{{channel="{channel}",exchange="{exchange}"}}' in text
            for symbol in ch.symbols:
                labels = f'channel="{channel}",exchange="{exchange}",symbol="{symbol}"'
                assert f"data_feed_symbol_cache_age_seconds{{{labels}}}" in text, labels
        for interval in cfg.featurizer.intervals:
            assert f'data_feed_feature_latency_seconds_count{{exchange="{exchange}",interval="{interval}"}}' in text
    for role in ("aggregator", "featurizer", "simulator", "collector BINANCE", "collector COINBASE", "redis"):
        assert f'data_feed_role_restarts_total{{role="{role}"}}' in text, role
    assert 'data_feed_sim_faults_total{exchange="BINANCE",fault="stall"}' in text


def assert_json_logs(run: Run) -> None:
    """``--log-format json``: every line the spawner and its roles wrote, on stdout, stderr and in their logs, is a
    JSON object with time, level, role and message; a collector's lines name its exchange."""
    logs = {path.stem: path.read_text() for path in (run.run_dir / "logs").glob("*.log")}
    logs["the spawner's stderr"], logs["its stdout"] = run.err, run.out  # the summary too is a JSON line
    for name, text in logs.items():
        lines = text.splitlines()
        assert lines or name not in ROLE_LOGS, name
        for line in lines:
            record = json.loads(line)
            assert {"time", "level", "role", "message"} <= set(record), (name, line)
            if name.startswith("collector-"):
                assert record["exchange"] == name.split("-", 1)[1], (name, line)
