"""Spawner: one supervisor of the roles among others (docker-compose and Kubernetes are the rest).

It runs the same commands any supervisor runs (``data-feed role ROLE [ARG] --config FILE``, see
``data_feed.runtime.roles``), with a config derived from the user's: its private redis-server's URL
(when ``redis.url`` is null) and the simulator's port once it has one. Start order: redis-server,
simulator (when any exchange is simulated), bus, the aggregator shards, the featurizer (waited for
until its ``/health`` says it has subscribed), one collector per exchange. A role that dies is
restarted with exponential backoff and counted. Stop order is the data flow's: pause the
simulator and wait until the collectors have read every frame it sent (``data_feed.runtime.simctl``), stop
the collectors (they flush), the featurizer (it drains the bus and closes its slices), the
aggregators (they drain the streams and write every open slice), then the simulator, the bus and
Redis. ``/metrics`` serves every role's metrics, ``/health`` every role's condition.

Lifetime: every child runs in its own session (Ctrl-C in the terminal reaches the spawner alone)
and dies with the spawner (parent-death signal: SIGKILL for roles, SIGTERM for redis-server, which
writes its AOF), so no role outlives a killed spawner. ``stop()`` runs every step whatever failed
before it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis
from prometheus_client.registry import Collector

from data_feed.access.db import make_engine, save_effective_config
from data_feed.cache.redis_server import PrivateRedis, RedisServerError, free_port
from data_feed.contracts.config import Config, parse_config
from data_feed.contracts.rundir import SIM_CERT_NAME, SIM_READY_NAME, RunDir, Runtime, die_with_parent
from data_feed.observability import metrics
from data_feed.observability.status import serve_http
from data_feed.runtime import spawner_status
from data_feed.runtime.roles import role_name
from data_feed.runtime.scrape import RedisAges
from data_feed.runtime.simctl import SIM_ACCOUNT_FILE, SimulatorControl

LOG = logging.getLogger("data_feed.spawner")
__all__ = ["SIM_ACCOUNT_FILE", "Role", "Spawner"]  # SIM_ACCOUNT_FILE: where the stop leaves the simulator's account

SUPERVISE_INTERVAL_SECONDS = 0.5
STABLE_AFTER_SECONDS = 60.0  # a role up this long has its backoff reset
READY_TIMEOUT_SECONDS = 60.0  # the simulator, the bus and the featurizer, at start
ROLE_HEALTH_TIMEOUT_SECONDS = 1.0
REDIS_TIMEOUT_SECONDS = 5.0  # the supervisor's own Redis calls (status, summary, simulator control)
GUARD_LOG_INTERVAL_SECONDS = 30.0


@dataclass
class Role:
    name: str  # e.g. "collector BINANCE"
    argv: list[str]
    log_path: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> tuple[int, dict[str, Any]]:
        """The role's own /health: (HTTP code, body); (0, {}) when it does not answer."""
        url = f"http://127.0.0.1:{self.http_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=ROLE_HEALTH_TIMEOUT_SECONDS) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}


class Spawner:
    def __init__(self, cfg: Config, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.role_cfg = cfg  # what roles run with: cfg, with the private Redis and the simulator's port
        self.redis: PrivateRedis | None = None
        self.roles: dict[str, Role] = {}
        self.client: redis.Redis | None = None
        self.sim: SimulatorControl | None = None
        self.stopping = False
        self.stop_requested = threading.Event()
        self.http: ThreadingHTTPServer | None = None
        self.started = time.time()
        self.written_at_start: dict[str, int] = {}
        self.summary: dict[str, dict[str, int]] = {}  # what landed, computed at stop
        self.redis_ages: Collector | None = None  # read from Redis at each scrape (data_feed.runtime.scrape)
        self._guard_logged: dict[str, float] = {}  # supervision step -> when its last error was logged

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        row = save_effective_config(make_engine(self.cfg.database.url), self.cfg)
        LOG.info("config %s saved as config_history row %d", self.cfg.config_hash()[:12], row)
        redis_url = self._start_redis()
        # bounded waits: a stopped or restarting Redis must not hang the supervision loop's status calls
        self.client = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self.redis_ages = RedisAges(self.cfg, redis_url, self.started)
        self.written_at_start = self.written_totals()
        self._derive(redis={"url": redis_url})
        if self.cfg.served():
            self._start_simulator()
        sim_at = (*self.role_cfg.simulator_urls(), str(self._sim_cert())) if self.sim else (None, None, None)
        Runtime(redis_url, *sim_at).save(self.run_dir.runtime_file)
        if self.cfg.bus.enabled:
            self._start_and_wait(self._add_role("bus"))
        for shard in range(self.cfg.aggregator.shards):
            self._launch(self._add_role("aggregator", shard=shard))
        if self.cfg.featurizer.enabled:
            self._start_and_wait(self._add_role("featurizer"))  # subscribed before the first batch is sent
        if self.cfg.gateway.enabled:
            self._start_and_wait(self._add_role("gateway"))
        for exchange in self.cfg.exchanges:
            self._launch(self._add_role("collector", exchange))
        metrics.export_known(self.cfg, [*self.roles, *(["redis"] if self.redis is not None else [])])
        self._serve_http()

    def _derive(self, **sections: dict[str, Any]) -> None:
        """Write the roles' config: the user's, with ``sections`` merged in (once known, the Redis URL and the
        simulator's port)."""
        data = self.role_cfg.model_dump(mode="json")
        for name, values in sections.items():
            data[name] = {**data[name], **values}
        self.role_cfg = parse_config(data, "derived")
        tmp = self.run_dir.effective_config.with_suffix(".tmp")
        tmp.write_text(self.role_cfg.canonical_json())
        tmp.replace(self.run_dir.effective_config)

    def _start_redis(self) -> str:
        if self.cfg.redis.url:
            return self.cfg.redis.url
        self.redis = PrivateRedis(self.run_dir.redis_dir, appendfsync=self.cfg.redis.private_appendfsync).start()
        LOG.info("private redis-server on %s", self.redis.url)
        return self.redis.url

    def _sim_cert(self) -> Path:
        return self.role_cfg.simulator_cert_dir() / SIM_CERT_NAME

    def _start_simulator(self) -> None:
        ready = self.role_cfg.simulator_cert_dir() / SIM_READY_NAME
        ready.unlink(missing_ok=True)
        role = self._add_role("simulator")
        self._launch(role)
        self._wait_for(lambda: ready.exists(), role, "written its ready file")
        port = int(json.loads(ready.read_text())["port"])
        self._derive(simulator={"port": port})  # a restarted simulator listens where collectors reconnect
        base, _ = self.role_cfg.simulator_urls()
        self.sim = SimulatorControl(self.role_cfg, base, str(self._sim_cert()), self.redis_client(),
                                    self._collector_alive)
        LOG.info("simulator on %s serving %s", base, ", ".join(self.cfg.served()))

    def redis_client(self) -> redis.Redis:
        assert self.client is not None
        return self.client

    def _start_and_wait(self, role: Role) -> None:
        self._launch(role)
        self._wait_for(lambda: role.health()[0] == 200, role, "said it is ready")

    def _wait_for(self, condition: Any, role: Role, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not condition():
            if time.monotonic() > deadline or not role.alive():
                raise RuntimeError(f"{role.name} has not {what}; see {role.log_path}")
            time.sleep(0.05)

    def _add_role(self, kind: str, arg: str | None = None, shard: int = 0) -> Role:
        name = role_name(kind, arg, shard, self.cfg.aggregator.shards)
        port = free_port()
        argv = [sys.executable, "-m", "data_feed.runtime.roles", kind, *([arg] if arg else [])]
        argv += ["--config", str(self.run_dir.effective_config), "--http-port", str(port)]
        if kind == "aggregator":
            argv += ["--shard", str(shard)]
        log_path = self.run_dir.logs_dir / f"{name.replace(' ', '-')}.log"
        self.roles[name] = Role(name=name, argv=argv, log_path=log_path, http_port=port)
        return self.roles[name]

    def _launch(self, role: Role) -> None:
        if role.log_file is None:
            role.log_file = open(role.log_path, "ab")  # noqa: SIM115 - kept open for the role's life
        role.proc = subprocess.Popen(role.argv, stdout=role.log_file, stderr=role.log_file, start_new_session=True,
                                     preexec_fn=die_with_parent())
        role.started_at = time.time()
        metrics.ROLE_UP.labels(role.name).set(1)
        LOG.info("started %s (pid %d)", role.name, role.proc.pid)

    def _collector_alive(self, exchange: str) -> bool:
        role = self.roles.get(f"collector {exchange}")
        return role is not None and role.alive()

    # -- supervise ---------------------------------------------------------------------------

    def supervise_once(self) -> None:
        now = time.monotonic()
        for role in self.roles.values():
            if role.alive() or self.stopping:
                if role.alive() and time.time() - role.started_at > STABLE_AFTER_SECONDS:
                    role.backoff = 1.0
                continue
            if role.proc is not None and role.next_start == 0.0:
                self._schedule_restart(role, now)
            if role.next_start and now >= role.next_start:
                role.next_start = 0.0
                role.restarts += 1
                metrics.RESTARTS.labels(role.name).inc()
                self._launch(role)
        if self.redis and self.redis.proc and self.redis.proc.poll() is not None and not self.stopping:
            LOG.error("private redis-server exited with %s; restarting it on the same port", self.redis.proc.returncode)
            metrics.RESTARTS.labels("redis").inc()
            try:
                self.redis.start()
            except RedisServerError as err:
                LOG.error("private redis-server did not restart (%s); retrying", err)

    def _schedule_restart(self, role: Role, now: float) -> None:
        assert role.proc is not None
        code = role.proc.returncode
        metrics.ROLE_UP.labels(role.name).set(0)
        metrics.mark_process_dead(role.proc.pid)
        role.next_start = now + role.backoff
        LOG.error("%s (pid %d) exited with code %s; restarting in %.1fs (see %s)", role.name, role.proc.pid, code,
                  role.backoff, role.log_path)
        role.backoff = min(role.backoff * 2, self.cfg.spawner.restart_backoff_max_seconds)

    def run(self, duration: float | None = None, on_tick: Any = None) -> None:
        """Supervise until ``duration`` seconds pass or a stop is requested, then stop cleanly."""
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not self.stop_requested.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._guarded("supervise the roles", self.supervise_once)
                if on_tick is not None:
                    self._guarded("show the status", lambda: on_tick(self))
                self.stop_requested.wait(SUPERVISE_INTERVAL_SECONDS)
        finally:
            self.stop()

    def _guarded(self, what: str, step: Any) -> None:
        """Run one step of the supervision loop; an error in it (Redis restarting under a status line, a
        failed fork) is logged, at most once per ``GUARD_LOG_INTERVAL_SECONDS`` per step, and supervision
        goes on: the supervisor is the one process that must outlive every fault of the others."""
        try:
            step()
        except Exception as err:
            now = time.monotonic()
            if now - self._guard_logged.get(what, -GUARD_LOG_INTERVAL_SECONDS) >= GUARD_LOG_INTERVAL_SECONDS:
                self._guard_logged[what] = now
                LOG.warning("could not %s (%s: %s); supervision goes on", what, type(err).__name__, err)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop in data-flow order; every step runs whatever failed before it (a failed start included)."""
        if self.stopping:
            return
        self.stopping = True
        LOG.info("stopping: input first, then drain, then flush")
        sim = self.sim
        steps: list[tuple[str, Any]] = [
            ("pause the simulator", (lambda: sim.pause_and_catch_up(self.run_dir.sim_dir)) if sim else None),
            ("stop the collectors", lambda: self._stop_roles(self._named("collector"), together=True)),
            ("stop the featurizer", lambda: self._stop_roles(self._named("featurizer"))),
            ("stop the gateway", lambda: self._stop_roles(self._named("gateway"))),
            ("stop the aggregators", lambda: self._stop_roles(self._named("aggregator"), together=True)),
            ("stop the simulator and the bus", lambda: self._stop_roles(self._named("simulator", "bus"))),
            ("kill what is left", self._kill_survivors),
            ("stop the status server", self._stop_http),
            ("sum up the run", self._summarize),
            ("stop redis-server", self.redis.stop if self.redis is not None else None),
            ("close the role logs", self._close_logs),
        ]
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:
                LOG.exception("stop: could not %s; going on with the rest", what)
        LOG.info("stopped")

    def _named(self, *kinds: str) -> list[Role]:
        return [r for r in self.roles.values() if r.name.split(" ")[0] in kinds]

    def _kill_survivors(self) -> None:
        for role in self.roles.values():
            if role.alive():
                assert role.proc is not None
                LOG.error("%s (pid %d) still running after the stop; killing it", role.name, role.proc.pid)
                role.proc.kill()
                role.proc.wait()

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.run_dir.spawner_file.unlink(missing_ok=True)

    def _summarize(self) -> None:
        self.summary = self.run_summary()

    def _close_logs(self) -> None:
        for role in self.roles.values():
            if role.log_file:
                role.log_file.close()

    def _stop_roles(self, roles: list[Role], together: bool = False) -> None:
        """SIGTERM each in order, waiting for each before the next; ``together``: signal all, then wait for
        all (independent peers such as the collectors or the aggregator shards)."""
        for role in roles:
            if role.alive():
                assert role.proc is not None
                role.proc.send_signal(signal.SIGTERM)
            if not together:
                self._wait([role])
        if together:
            self._wait(roles)

    def _wait(self, roles: list[Role]) -> None:
        deadline = time.monotonic() + self.cfg.spawner.stop_timeout_seconds
        for role in roles:
            if role.proc is None:
                continue
            try:
                code = role.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.error("%s did not stop within %ss; killing it", role.name, self.cfg.spawner.stop_timeout_seconds)
                role.proc.kill()
                code = role.proc.wait()
            metrics.ROLE_UP.labels(role.name).set(0)
            metrics.mark_process_dead(role.proc.pid)
            if code != 0:
                LOG.error("%s exited with code %s at stop (see %s)", role.name, code, role.log_path)

    # -- observe -----------------------------------------------------------------------------

    def sim_request(self, method: str, path: str) -> dict[str, Any]:
        assert self.sim is not None, "no simulator in this run"
        return self.sim.request(method, path)

    def written_totals(self) -> dict[str, int]:
        return spawner_status.written_totals(self.redis_client())

    def run_summary(self) -> dict[str, dict[str, int]]:
        """Rows, files and bytes each channel landed during this run."""
        now = self.written_totals() if self.client is not None else {}
        return spawner_status.run_summary(now, self.written_at_start)

    def collector_states(self) -> dict[str, dict[str, str]]:
        return spawner_status.collector_states(self.redis_client(), self.cfg.exchanges)

    def health(self) -> dict[str, Any]:
        return spawner_status.health(self.cfg, self.client, list(self.roles.values()), self.started, self.stopping)

    def _serve_http(self) -> None:
        def health() -> tuple[int, dict[str, Any]]:
            body = self.health()
            return (200 if body["status"] == "ok" else 503), body

        self.http = serve_http("127.0.0.1", self.cfg.spawner.http_port, health,
                               lambda: [self.redis_ages] if self.redis_ages is not None else [])
        port = self.http.server_address[1]
        state = {"pid": os.getpid(), "http_port": port, "started_at": self.started}
        self.run_dir.spawner_file.write_text(json.dumps(state))
        LOG.info("serving /metrics and /health on http://127.0.0.1:%d", port)
