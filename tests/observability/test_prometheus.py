"""A real Prometheus (Debian's) scraping a real `data-feed run`, in one run:

1. every target is up;
2. every PromQL expression of every dashboard panel returns data (``$__rate_interval``, ``$__range`` and the
   template variables substituted), none an error or an empty result; every template variable has values;
3. SIGKILL of a collector makes DataFeedCollectorDown fire within its ``for`` plus two scrape intervals
   (plus the spawner's detection of the death: it polls its children every 0.5 s);
4. SIGSTOP of the aggregator makes DataFeedLakeStale fire: lake freshness is computed when /metrics is
   scraped, so it grows while the aggregator cannot report.

The rules are the real ones in their fast copy (``alerts.rules(FAST)``): every ``for`` 5 s and a 10 s
freshness margin instead of minutes, so the test waits seconds. Scrapes and rule evaluations every second.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from data_feed.observability.__main__ import alerts_yaml
from data_feed.observability.alerts import FAST, rules
from data_feed.observability.dashboards import DASHBOARDS
from data_feed.runtime.spawner import SUPERVISE_INTERVAL_SECONDS
from tests.harness import Run, pipeline_config, wait_for
from tests.observability.prometheus import Prometheus
from tests.observability.tools import require

SCRAPE_SECONDS = 1.0
FAST_FOR_SECONDS = float(str(FAST.for_override).removesuffix("s"))
SUBSTITUTIONS = {"$__rate_interval": "15s", "$__range": "1m", "$exchange": "BINANCE", "$symbol": "BTC-USDT|ETH-USDT",
                 "$interval": "1s|1m"}
PANELS_TIMEOUT_SECONDS = 120
LABEL_VALUES = re.compile(r"label_values\((.+), (\w+)\)")
POLL_SECONDS = 0.2


def substituted(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def panel_queries() -> dict[str, str]:
    """``dashboard / panel [refId]`` -> its expression, variables substituted."""
    out = {}
    for name, build in DASHBOARDS.items():
        for panel in build().render()["panels"]:
            for target in panel.get("targets", []):
                out[f"{name} / {panel['title']} [{target['refId']}]"] = substituted(target["expr"])
    return out


@pytest.mark.slow
def test_a_real_prometheus_scraping_a_real_run_answers_every_panel_and_fires_collector_down_and_lake_stale(
        tmp_path: Path) -> None:
    prom = Prometheus(require("prometheus"), tmp_path / "prometheus", SCRAPE_SECONDS)
    run = Run(tmp_path, pipeline_config(tmp_path)).start()
    aggregator = None
    try:
        prom.start(f"127.0.0.1:{run.port()}", alerts_yaml(rules(FAST)))
        every_target_is_up(prom)
        every_panel_returns_data(prom)
        every_variable_has_values(prom)
        collector_down_fires_after_a_sigkill(prom, run)
        aggregator = run.pid("aggregator")
        assert aggregator is not None
        lake_stale_fires_while_the_aggregator_is_stopped(prom, aggregator)
    finally:
        if aggregator is not None:
            os.kill(aggregator, signal.SIGCONT)
        prom.stop()
        code = run.stop()
    assert code == 0, run.err[-3000:]


def every_target_is_up(prom: Prometheus) -> None:
    targets = wait_for(lambda: (t := prom.targets()) and all(x["health"] == "up" for x in t) and t, 60,
                       "every target up", interval=POLL_SECONDS)
    assert [t["labels"]["job"] for t in targets] == ["data-feed"]


def every_panel_returns_data(prom: Prometheus) -> None:
    """Each query answers without error (at once) and with at least one series (once rates have two samples)."""
    pending = panel_queries()
    deadline = time.monotonic() + PANELS_TIMEOUT_SECONDS
    while pending and time.monotonic() < deadline:
        pending = {title: expr for title, expr in pending.items() if not prom.query(expr)}
        if pending:
            time.sleep(1.0)
    assert not pending, f"panels without data after {PANELS_TIMEOUT_SECONDS}s: {pending}"


def every_variable_has_values(prom: Prometheus) -> None:
    for name, build in DASHBOARDS.items():
        for variable in build().render()["templating"]["list"][1:]:
            match = LABEL_VALUES.fullmatch(variable["definition"])
            assert match is not None, (name, variable["definition"])
            values = prom.label_values(match.group(2), substituted(match.group(1)))
            assert values, (name, variable["name"])


def collector_down_fires_after_a_sigkill(prom: Prometheus, run: Run) -> None:
    assert not prom.alerts("DataFeedCollectorDown", "pending") + prom.alerts("DataFeedCollectorDown")
    killed = time.monotonic()
    run.kill_role("collector BINANCE")  # SIGKILL; returns once the spawner has restarted it
    firing = wait_for(lambda: prom.alerts("DataFeedCollectorDown"), 60, "DataFeedCollectorDown to fire",
                      interval=POLL_SECONDS)
    elapsed = time.monotonic() - killed
    assert [a["labels"]["role"] for a in firing] == ["collector BINANCE"]
    bound = FAST_FOR_SECONDS + 2 * SCRAPE_SECONDS + SUPERVISE_INTERVAL_SECONDS + POLL_SECONDS
    print(f"DataFeedCollectorDown fired {elapsed:.1f}s after the SIGKILL (bound {bound:.1f}s)")
    assert elapsed <= bound, f"fired {elapsed:.1f}s after the kill, beyond {bound:.1f}s"


def lake_stale_fires_while_the_aggregator_is_stopped(prom: Prometheus, pid: int) -> None:
    assert not prom.alerts("DataFeedLakeStale", "pending") + prom.alerts("DataFeedLakeStale")
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    firing = wait_for(lambda: prom.alerts("DataFeedLakeStale"), 120, "DataFeedLakeStale to fire",
                      interval=POLL_SECONDS)
    print(f"DataFeedLakeStale fired {time.monotonic() - stopped:.1f}s after SIGSTOP, for "
          f"{sorted((a['labels']['exchange'], a['labels']['channel']) for a in firing)}")
    assert {a["labels"]["channel"] for a in firing} & {"trades", "l2_book", "ticker"}
    backlog = prom.query("max(data_feed_stream_oldest_pending_age_seconds)")
    assert float(backlog[0]["value"][1]) > FAST.freshness_margin_seconds  # the cache's side of the same stop
