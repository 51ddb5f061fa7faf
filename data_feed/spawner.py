"""Spawner role: starts, supervises and stops every other role; serves /metrics and /health.

Start order: private redis-server (when no URL is configured), simulator (when
any exchange is simulated), the bus (a ZMQ proxy thread in this process),
aggregator, featurizer (waited for until it has subscribed), one collector per exchange. A role
that dies is restarted with exponential backoff and counted. Stop order is the
data flow's: pause the simulator, wait until collectors have received every
frame it sent, stop collectors (they flush), stop the featurizer (it drains the
bus and closes its open slices), stop the aggregator (it drains the
streams and writes every open slice), then stop the simulator, the bus and Redis.

Lifetime: every child runs in its own session (Ctrl-C in the terminal reaches the
spawner alone, which stops the roles in the order above) and dies with the spawner
(parent-death signal: SIGKILL for roles, SIGTERM for redis-server, which writes its
AOF), so no role outlives a killed spawner. ``stop()`` runs every step whatever
failed before it. A role reports its own condition (ok or degraded, with a reason)
in a Redis health key; ``/health`` is 503 with the reasons when any role is down or
degraded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis
from prometheus_client.registry import Collector

from data_feed import metrics
from data_feed.bus import Proxy
from data_feed.cache import (
    AGGREGATOR_WRITTEN_KEY,
    STATE_FRAMES_FIELD,
    STATE_FRAMES_OPEN_FIELD,
    collector_state_key,
    configured_streams,
    health_key,
    stream_lag,
)
from data_feed.config import Config
from data_feed.db import make_engine, save_effective_config
from data_feed.redis_server import PrivateRedis, RedisServerError
from data_feed.runtime import RunDir, Runtime, die_with_parent
from data_feed.scrape import RedisAges

LOG = logging.getLogger("data_feed.spawner")

SUPERVISE_INTERVAL_SECONDS = 0.5
STABLE_AFTER_SECONDS = 60.0  # a role up this long has its backoff reset
SIM_READY_TIMEOUT_SECONDS = 30.0
FEATURIZER_READY_TIMEOUT_SECONDS = 30.0
BUS_SUBSCRIBE_SETTLE_SECONDS = 0.2  # a subscription takes a moment to reach the proxy
CATCH_UP_TIMEOUT_SECONDS = 15.0
SIM_ACCOUNT_FILE = "sent-at-stop.json"
SIM_ACCOUNT_BOOK_DEPTH = 20


@dataclass
class Role:
    name: str  # e.g. "collector BINANCE"
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Spawner:
    def __init__(self, cfg: Config, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.redis: PrivateRedis | None = None
        self.roles: dict[str, Role] = {}
        self.runtime: Runtime | None = None
        self.client: redis.Redis | None = None
        self.stopping = False
        self.stop_requested = threading.Event()
        self.http: ThreadingHTTPServer | None = None
        self.started = time.time()
        self.written_at_start: dict[str, int] = {}
        self.summary: dict[str, dict[str, int]] = {}  # what landed, computed at stop
        self.bus: Proxy | None = None
        self.redis_ages: Collector | None = None  # read from Redis at each scrape (data_feed.scrape)

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        self.run_dir.effective_config.write_text(self.cfg.canonical_json())
        row = save_effective_config(make_engine(self.cfg.database.url), self.cfg)
        LOG.info("config %s saved as config_history row %d", self.cfg.config_hash()[:12], row)
        redis_url = self._start_redis()
        self.client = redis.Redis.from_url(redis_url)
        self.redis_ages = RedisAges(self.cfg, redis_url, self.started)
        self.written_at_start = self.written_totals()
        sim = self._start_simulator() if self.cfg.served() else None
        self.runtime = Runtime(redis_url=redis_url, **(sim or {}))
        self.runtime.save(self.run_dir.runtime_file)
        self.bus = Proxy(self.cfg).start() if self.cfg.bus.enabled else None
        self._add_role("aggregator", None)
        if self.cfg.featurizer.enabled:
            self._start_featurizer()
        for exchange in self.cfg.exchanges:
            self._add_role("collector", exchange)
        for role in self.roles.values():
            if role.proc is None:
                self._launch(role)
        metrics.export_known(self.cfg, [*self.roles, *(["redis"] if self.redis is not None else [])])
        self._serve_http()

    def _start_redis(self) -> str:
        if self.cfg.redis.url:
            return self.cfg.redis.url
        self.redis = PrivateRedis(self.run_dir.redis_dir, appendfsync=self.cfg.redis.private_appendfsync).start()
        LOG.info("private redis-server on %s", self.redis.url)
        return self.redis.url

    def _start_simulator(self) -> dict[str, str]:
        ready = self.run_dir.sim_ready_file
        ready.unlink(missing_ok=True)
        role = self._add_role("simulator", None)
        self._launch(role)
        deadline = time.monotonic() + SIM_READY_TIMEOUT_SECONDS
        while not ready.exists():
            if time.monotonic() > deadline or not role.alive():
                raise RuntimeError(f"simulator did not start; see {role.log_path}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        role.argv += ["--port", str(info["port"])]  # a restarted simulator listens where collectors reconnect
        base = f"https://localhost:{info['port']}"
        LOG.info("simulator on %s serving %s", base, ", ".join(self.cfg.served()))
        return {"sim_base_url": base, "sim_ws_base": f"wss://localhost:{info['port']}", "sim_cert": info["cert"]}

    def _start_featurizer(self) -> None:
        """Launch the featurizer and wait until it has subscribed, so it sees the collectors' first batches."""
        from featurizer.role import READY_FILE

        ready = self.run_dir.root / READY_FILE
        ready.unlink(missing_ok=True)
        role = self._add_role("featurizer", None)
        self._launch(role)
        deadline = time.monotonic() + FEATURIZER_READY_TIMEOUT_SECONDS
        while not ready.exists():
            if time.monotonic() > deadline or not role.alive():
                raise RuntimeError(f"featurizer did not start; see {role.log_path}")
            time.sleep(0.05)
        time.sleep(BUS_SUBSCRIBE_SETTLE_SECONDS)

    def _add_role(self, kind: str, arg: str | None) -> Role:
        name = kind if arg is None else f"{kind} {arg}"
        argv = [sys.executable, "-m", "data_feed.roles", kind, *([arg] if arg else [])]
        argv += ["--run-dir", str(self.run_dir.root)]
        log_path = self.run_dir.logs_dir / f"{name.replace(' ', '-')}.log"
        self.roles[name] = Role(name=name, argv=argv, log_path=log_path)
        return self.roles[name]

    def _launch(self, role: Role) -> None:
        if role.log_file is None:
            role.log_file = open(role.log_path, "ab")  # noqa: SIM115 - kept open for the role's life
        role.proc = subprocess.Popen(role.argv, stdout=role.log_file, stderr=role.log_file, start_new_session=True,
                                     preexec_fn=die_with_parent())
        role.started_at = time.time()
        metrics.ROLE_UP.labels(role.name).set(1)
        LOG.info("started %s (pid %d)", role.name, role.proc.pid)

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
                self.supervise_once()
                if on_tick is not None:
                    on_tick(self)
                self.stop_requested.wait(SUPERVISE_INTERVAL_SECONDS)
        finally:
            self.stop()

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
        collectors = [r for n, r in self.roles.items() if n.startswith("collector")]
        steps: list[tuple[str, Any]] = [
            ("pause the simulator", self._pause_simulator_and_catch_up if "simulator" in self.roles else None),
            ("stop the collectors", lambda: self._stop_roles(collectors, together=True)),
            ("stop the featurizer, aggregator and simulator", lambda: self._stop_roles(
                [self.roles[n] for n in ("featurizer", "aggregator", "simulator") if n in self.roles])),
            ("kill what is left", self._kill_survivors),
            ("stop the bus", self.bus.stop if self.bus is not None else None),
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
        """SIGTERM each in order, waiting for each before the next (aggregator drains before the sim stops);
        ``together``: signal all, then wait for all (independent peers such as the collectors)."""
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

    def _pause_simulator_and_catch_up(self) -> None:
        """Stop the simulated exchanges' input and wait until collectors have read every frame sent."""
        try:
            self.sim_request("POST", "/_sim/pause")
        except OSError as err:
            LOG.error("could not pause the simulator (%s); frames in flight at stop may be lost", err)
            return
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
        behind = self.frames_behind()
        while behind and time.monotonic() < deadline:
            time.sleep(0.1)
            behind = self.frames_behind()
        if behind:
            LOG.error("collectors still behind the simulator at stop: %s frames", behind)
        self._save_simulator_account()

    def _save_simulator_account(self) -> None:
        """What the simulator sent and its books at stop, for comparison with the lake."""
        account: dict[str, Any] = {"stats": self.sim_request("GET", "/_sim/stats"), "books": {}}
        for exchange, ex in self.cfg.simulated().items():
            for symbol in ex.symbols():
                book = self.sim_request("GET", f"/_sim/book/{exchange}/{symbol}?depth={SIM_ACCOUNT_BOOK_DEPTH}")
                account["books"].setdefault(exchange, {})[symbol] = book
        path = self.run_dir.sim_dir / SIM_ACCOUNT_FILE
        path.write_text(json.dumps(account))
        LOG.info("simulator's account of what it sent saved to %s", path)

    def frames_behind(self) -> dict[str, int]:
        """Frames the simulator wrote that a collector has not read yet, counted over the connections open
        now on both sides (a restarted collector's count starts at 0 while the simulator's total does not)."""
        stats = self.sim_request("GET", "/_sim/stats")
        behind = {}
        for exchange in self.cfg.served():
            role = self.roles.get(f"collector {exchange}")
            if role is None or not role.alive():
                continue
            sim, state = stats.get(exchange, {}), self._collector_state(exchange)
            if "frames_sent_open" in sim:
                sent, received = int(sim["frames_sent_open"]), int(state.get(STATE_FRAMES_OPEN_FIELD, 0))
            else:  # a recorded session: one connection per recorded one, never reopened
                sent, received = int(sim.get("frames_sent", 0)), int(state.get(STATE_FRAMES_FIELD, 0))
            if received < sent:
                behind[exchange] = sent - received
        return behind

    def sim_request(self, method: str, path: str) -> dict[str, Any]:
        assert self.runtime is not None and self.runtime.sim_base_url and self.runtime.sim_cert
        ctx = ssl.create_default_context(cafile=self.runtime.sim_cert)
        data = b"" if method == "POST" else None
        req = urllib.request.Request(self.runtime.sim_base_url + path, method=method, data=data)
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read() or b"{}")
            return body

    # -- observe -----------------------------------------------------------------------------

    def _collector_state(self, exchange: str) -> dict[str, str]:
        assert self.client is not None
        raw = self.client.hgetall(collector_state_key(exchange))
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]

    def written_totals(self) -> dict[str, int]:
        assert self.client is not None
        raw = self.client.hgetall(AGGREGATOR_WRITTEN_KEY)
        return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def run_summary(self) -> dict[str, dict[str, int]]:
        """Rows, files and bytes each channel landed during this run."""
        now = self.written_totals() if self.client is not None else {}
        out: dict[str, dict[str, int]] = {}
        for key, value in now.items():
            channel, what = key.rsplit(":", 1)
            totals = out.setdefault(channel, {"rows": 0, "files": 0, "bytes": 0})
            totals[what] = value - self.written_at_start.get(key, 0)
        return out

    def health(self) -> dict[str, Any]:
        now = time.time()
        reported = self._reported_health()
        roles = [
            {"role": r.name, "pid": r.proc.pid if r.proc else None, "alive": r.alive(),
             "uptime_s": round(now - r.started_at, 1) if r.alive() else 0.0, "restarts": r.restarts,
             "status": reported.get(r.name, {}).get("status", "ok" if r.alive() else "down"),
             "reason": reported.get(r.name, {}).get("reason", "" if r.alive() else "not running")}
            for r in self.roles.values()
        ]
        reasons = [f"{r['role']}: {r['reason']}" for r in roles if not r["alive"] or r["status"] != "ok"]
        lag: dict[str, int] = {}
        try:
            if self.client is not None:
                lag = {key: stream_lag(self.client, key) for key in configured_streams(self.cfg)}
        except (redis.RedisError, OSError) as err:
            reasons.append(f"redis: unreachable ({err})")
        status = "stopping" if self.stopping else ("degraded" if reasons else "ok")
        return {"status": status, "reasons": reasons, "pid": os.getpid(), "uptime_s": round(now - self.started, 1),
                "roles": roles, "lag": lag}

    def _reported_health(self) -> dict[str, dict[str, str]]:
        """What each role says of itself in its Redis health key (expired keys say nothing)."""
        if self.client is None:
            return {}
        try:
            raw = self.client.mget([health_key(name) for name in self.roles])
        except (redis.RedisError, OSError):
            return {}
        return {name: json.loads(value) for name, value in zip(self.roles, raw, strict=True) if value}

    def collector_states(self) -> dict[str, dict[str, str]]:
        return {ex: self._collector_state(ex) for ex in self.cfg.exchanges}

    def _serve_http(self) -> None:
        spawner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    extra = [spawner.redis_ages] if spawner.redis_ages is not None else []
                    self._send(200, metrics.render_latest(*extra), "text/plain; version=0.0.4")
                elif self.path == "/health":
                    body = spawner.health()
                    self._send(200 if body["status"] == "ok" else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /health\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                LOG.debug("http: " + fmt, *args)

        self.http = ThreadingHTTPServer(("127.0.0.1", self.cfg.spawner.http_port), Handler)
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        port = self.http.server_address[1]
        state = {"pid": os.getpid(), "http_port": port, "started_at": self.started}
        self.run_dir.spawner_file.write_text(json.dumps(state))
        LOG.info("serving /metrics and /health on http://127.0.0.1:%d", port)
