"""Deployment configuration: one YAML file loaded into frozen, typed objects.

Every role reads its settings from here and nowhere else. Unknown keys and bad
values stop start-up with the offending key's dotted path in the message, so a
typo can never silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_feed.contracts.schemas import LAKE_CHANNELS, MARKET_CHANNELS, Channel

# The embedded default config ships inside the package (package data), so an installed wheel has it;
# configs/data-feed-config.yaml is its documented copy (tests/contracts/test_default_config.py keeps them identical).
DEFAULT_CONFIG_RESOURCE = "default-config.yaml"
DEFAULT_CONFIG_PATH = Path(str(resources.files("data_feed").joinpath(DEFAULT_CONFIG_RESOURCE)))

SUPPORTED_EXCHANGES = ("BINANCE", "BINANCE_FUTURES", "BYBIT", "COINBASE", "KRAKEN", "OKX")
SOURCES = ("simulator", "live", "replay")
GAPS_CHANNEL = Channel.GAPS.value  # the str form, for the many dict keys and comparisons of cached rows
FEATURES_CHANNEL = Channel.FEATURES.value


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names every bad key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelConfig(_Frozen):
    """One subscribed channel of one exchange."""

    symbols: tuple[str, ...] = Field(min_length=1, description="cryptofeed-normalized symbols, e.g. BTC-USDT")

    @field_validator("symbols")
    @classmethod
    def _symbols_are_normalized(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for sym in value:
            if "-" not in sym or sym != sym.upper():
                raise ValueError(f"symbol {sym!r} must be upper case BASE-QUOTE, e.g. BTC-USDT")
        if len(set(value)) != len(value):
            raise ValueError("symbols must not repeat")
        return value


class BookChannelConfig(ChannelConfig):
    max_depth: int = Field(default=100, gt=0, description="levels per side kept by the collector's book")


class SimulatedMarketConfig(_Frozen):
    """The synthetic market the simulator runs for one exchange (ignored for live sources)."""

    trades_per_second: float = Field(default=20.0, gt=0, description="mean trade rate per symbol")
    book_updates_per_second: float = Field(default=50.0, gt=0, description="mean level-change rate per symbol")
    levels: int = Field(default=50, gt=0, le=5000, description="price levels per side in the synthetic book")


class Fault(StrEnum):
    """What the simulator can inject (``data_feed.sim.faults``); the label values of
    ``data_feed_sim_faults_total``, here so the metrics need not import the simulator."""

    DISCONNECT = "disconnect"
    SEQUENCE_GAP = "sequence_gap"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    STALL = "stall"
    SNAPSHOT_DELAY = "snapshot_delay"
    SNAPSHOT_FAILURE = "snapshot_failure"


class FaultConfig(_Frozen):
    """Faults the simulator injects into one exchange's feed; each fires once, null/0 never fires."""

    disconnect_after_frames: int | None = Field(default=None, gt=0, description="close the socket after N frames")
    disconnect_after_seconds: float | None = Field(default=None, gt=0, description="close it T s after the first")
    sequence_gap_after_frames: int | None = Field(default=None, gt=0,
                                                  description="drop the first book-only frame after N frames")
    malformed_after_frames: int | None = Field(default=None, gt=0, description="insert a non-JSON frame after N")
    truncated_after_frames: int | None = Field(default=None, gt=0,
                                               description="insert a truncated copy of frame N+1 before it")
    stall_after_frames: int | None = Field(default=None, gt=0, description="stop sending for stall_seconds after N")
    stall_seconds: float = Field(default=5.0, gt=0)
    snapshot_delay_seconds: float = Field(default=0.0, ge=0, description="delay every REST book snapshot this long")
    snapshot_failures: int = Field(default=0, ge=0, description="fail the first N REST book snapshots")
    snapshot_failure_status: Literal[429, 500] = 500


class ExchangeConfig(_Frozen):
    """One exchange: where its data comes from and which channels to collect."""

    source: Literal["simulator", "live", "replay"] = "simulator"
    trades: ChannelConfig | None = None
    l2_book: BookChannelConfig | None = None
    ticker: ChannelConfig | None = None
    funding: ChannelConfig | None = None
    open_interest: ChannelConfig | None = None
    liquidations: ChannelConfig | None = None
    candles: ChannelConfig | None = None
    market: SimulatedMarketConfig = SimulatedMarketConfig()
    faults: FaultConfig = FaultConfig()
    watchdog_seconds: float = Field(default=30.0, gt=0, description="reconnect after this long without a frame")
    record: str | None = Field(default=None, description="directory: also write the raw session (REST responses, "
                               "websocket frames) there, in the capture format")

    @model_validator(mode="after")
    def _at_least_one_channel(self) -> ExchangeConfig:
        if not self.channels():
            raise ValueError(f"subscribe to at least one of {', '.join(MARKET_CHANNELS)}")
        return self

    def channels(self) -> dict[str, ChannelConfig]:
        """Configured channels by name, in a stable order."""
        found = {name: getattr(self, name) for name in MARKET_CHANNELS}
        return {name: cfg for name, cfg in found.items() if cfg is not None}

    def stream_channels(self) -> tuple[str, ...]:
        """Channels with a Redis stream and a lake table: the configured ones plus ``gaps`` (collector-written)."""
        return (*self.channels(), GAPS_CHANNEL)

    def symbols(self) -> tuple[str, ...]:
        """Every symbol of any channel, first-seen order."""
        seen: dict[str, None] = {}
        for cfg in self.channels().values():
            seen.update(dict.fromkeys(cfg.symbols))
        return tuple(seen)


class RedisConfig(_Frozen):
    url: str | None = Field(default=None, description="redis:// URL; null starts a private redis-server")
    stream_maxlen: int = Field(default=200_000, gt=0, description="bound (entries) of each stream; at the bound "
                               "writers spill to local disk instead of trimming what is not yet landed")
    batch_max_records: int = Field(default=1000, gt=0, description="records per stream entry at most")
    batch_max_ms: int = Field(default=50, gt=0, description="flush a partial batch after this many ms")
    spill_max_mb: int = Field(default=1024, gt=0, description="per writer process: compressed batches kept on "
                              "local disk while Redis is full or unreachable; past this, records are dropped as gaps")
    spill_dir: str | None = Field(default=None, description="spill directory; null = spawner.run_dir/spill")
    private_appendfsync: Literal["always", "everysec"] = Field(
        default="always", description="fsync policy of the private redis-server: always = an acknowledged write "
        "survives a crash of Redis; everysec may lose the last second")


class S3LakeConfig(_Frozen):
    """The lake on S3 with a Glue catalog; credentials come from the environment (AWS_ACCESS_KEY_ID, ...)."""

    bucket: str = Field(min_length=3, description="bucket holding the lake")
    prefix: str = Field(default="lake", description="key prefix of the lake inside the bucket")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint; null = AWS")
    glue_endpoint_url: str | None = Field(default=None, description="Glue endpoint; null = AWS")
    region: str | None = Field(default=None, description="AWS region; null = the environment's (AWS_REGION)")
    database: str = Field(default="data_feed", description="Glue database: one table per channel")


class LakeConfig(_Frozen):
    root: str = Field(default="./lake", description="lake directory")
    s3: S3LakeConfig | None = Field(default=None, description="land slices on S3 and register partitions in Glue "
                                    "instead of lake.root and the local catalog")
    slice_seconds: int = Field(default=60, gt=0, le=86_400, description="slice length, by exchange time")
    allowed_lateness_seconds: float = Field(default=5.0, ge=0, description="wait this long past a slice end")
    compression_level: int = Field(default=3, ge=1, le=22, description="zstd level")
    book_snapshot_depth: int = Field(default=100, gt=0, le=5000,
                                     description="levels per side of the full book each l2_book slice starts with")
    compaction_target_mb: int = Field(default=128, gt=0, description="data-feed lake compact merges a partition's "
                                      "closed slice files into files of at most this size (MiB)")
    compaction_grace_seconds: float = Field(default=300.0, ge=0, description="files replaced by compaction or "
                                            "expired by retention are deleted this long after, at the earliest")
    retention_days: dict[str, int] = Field(default_factory=dict, description="channel -> days: data-feed lake "
                                           "expire deletes that channel's partitions older than this")

    @field_validator("retention_days")
    @classmethod
    def _retention_per_known_channel(cls, value: dict[str, int]) -> dict[str, int]:
        for channel, days in value.items():
            if channel not in LAKE_CHANNELS:
                known = ", ".join(LAKE_CHANNELS)
                raise ValueError(f"retention_days: {channel!r} is not a lake channel; known: {known}")
            if days <= 0:
                raise ValueError(f"retention_days.{channel}: must be > 0 days, got {days}")
        return value


class AthenaConfig(_Frozen):
    """Where ``data-feed query --engine athena`` runs: an Athena workgroup over the Glue database of the lake."""

    database: str = Field(default="data_feed", description="Glue database holding one table per channel")
    workgroup: str = Field(default="primary", description="Athena workgroup (its result location is used)")
    region: str | None = Field(default=None, description="AWS region; null = the environment's (AWS_REGION)")


class DatabaseConfig(_Frozen):
    url: str = Field(default="sqlite:///./.data-feed/data-feed.db", description="SQLAlchemy URL")


class SimulatorConfig(_Frozen):
    host: str = Field(default="127.0.0.1", description="address the simulator listens on")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port (the spawner passes the one "
                      "it got to every role); a fixed port when roles run as services")
    seed: int = 42
    public_host: str = Field(default="localhost", description="name collectors dial the simulator by; its TLS "
                             "certificate names it (a compose service name, say)")
    cert_dir: str | None = Field(default=None, description="where the simulator keeps its certificate and "
                                 "collectors read it; null = spawner.run_dir/sim")


class AggregatorConfig(_Frozen):
    shards: int = Field(default=1, ge=1, le=64, description="aggregator processes; shard i lands the streams whose "
                        "key hashes to i (cache.shard_of), with its own consumer name")


class ReplayConfig(_Frozen):
    """Recorded sessions the simulator serves to exchanges whose source is ``replay``."""

    files: tuple[str, ...] = Field(default=(), description="session files (.jsonl or .jsonl.zst), one per exchange")
    speed: float | None = Field(default=None, gt=0, description="1 = recorded pace, 10 = ten times faster; "
                                "null = as fast as the collector reads")


class SpawnerConfig(_Frozen):
    http_port: int = Field(default=9108, ge=0, le=65535, description="/metrics and /health; 0 picks a free port")
    run_dir: str = Field(default="./.data-feed", description="pid files, run state, metrics, private redis")
    restart_backoff_max_seconds: float = Field(default=30.0, gt=0)
    stop_timeout_seconds: float = Field(default=30.0, gt=0)


INTERVAL_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_INTERVAL_PATTERN = re.compile(r"^([1-9][0-9]*)([smhd])$")


def interval_seconds(interval: str) -> int:
    """Length of a feature interval such as ``1s``, ``5m``, ``1h``, ``1d`` (the one parser of that format)."""
    match = _INTERVAL_PATTERN.match(interval)
    if match is None:
        raise ValueError(f"interval {interval!r}: expected a positive count and a unit of s, m, h or d, e.g. 1s, 1m")
    return int(match.group(1)) * INTERVAL_UNIT_SECONDS[match.group(2)]


class BusConfig(_Frozen):
    """The ZMQ bus: an XSUB/XPUB proxy run by the spawner; collectors and the featurizer publish on it."""

    enabled: bool = Field(default=True, description="run the proxy; collectors publish their batches on it")
    publish_endpoint: str | None = Field(default=None, description="the proxy's XSUB side, where publishers "
                                         "connect; null = ipc socket in spawner.run_dir")
    subscribe_endpoint: str | None = Field(default=None, description="the proxy's XPUB side, where subscribers "
                                           "connect; null = ipc socket in spawner.run_dir")
    high_water_mark: int = Field(default=100_000, gt=0, description="batches queued per socket before a "
                                 "publisher counts them as dropped")
    publish_on_receipt: bool = Field(default=False, description="collectors publish each frame's rows within its "
                                     "event-loop pass, not after the flush's Redis write (lower latency; a "
                                     "collector killed before its flush leaves live slices the lake lacks)")


class FeaturizerConfig(_Frozen):
    """Per-slice trade and order-book statistics from the bus, published on it and landed in the lake."""

    enabled: bool = Field(default=True, description="run the featurizer role (needs bus.enabled)")
    intervals: tuple[str, ...] = Field(default=("1s", "1m"), min_length=1, description="slice lengths; the "
                                       "first is computed from records, the others merged from it (multiples)")
    allowed_lateness_seconds: float = Field(default=2.0, ge=0, description="a slice closes once the exchange's "
                                            "newest event time passes its end by this much; later records are late")
    imbalance_levels: int = Field(default=5, gt=0, description="top-N levels per side of the book imbalance")
    depth_bps: float = Field(default=10.0, gt=0, description="book depth is summed within this many bps of mid")
    provisional_ms: int = Field(default=0, ge=0, description="every N ms, each symbol's open first-interval slice "
                                "as it stands, on features.open-INTERVAL.EXCHANGE.SYMBOL (never landed); 0 = off")

    @field_validator("intervals")
    @classmethod
    def _multiples_of_the_first(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seconds = [interval_seconds(v) for v in value]
        if any(s % seconds[0] or s <= seconds[0] for s in seconds[1:]):
            raise ValueError("each interval after the first must be a longer multiple of the first")
        return value


class GatewayConfig(_Frozen):
    """Signal access: the gateway re-publishes the bus's features to consumers the permission table entitles,
    over CURVE-encrypted, ZAP-authenticated ZMQ (``data_feed.access.gateway``)."""

    enabled: bool = Field(default=False, description="the spawner runs the gateway role (needs bus.enabled)")
    endpoint: str = Field(default="tcp://127.0.0.1:5598", description="where consumers connect (XPUB, CURVE server)")
    server_key_file: str | None = Field(default=None, description="the gateway's CURVE key pair (Z85, created at "
                                        "the first start, mode 0600); null = spawner.run_dir/gateway.key")
    zap_domain: str = Field(default="data-feed", min_length=1, description="ZAP domain; handshakes in another "
                            "domain are refused")
    refresh_seconds: float = Field(default=0.25, gt=0, le=1.0, description="how often the permission table is "
                                   "re-read: revocation, expiry and disabling take effect within this")
    high_water_mark: int = Field(default=10_000, gt=0, description="batches queued per consumer before ZMQ drops")


class Config(_Frozen):
    exchanges: dict[str, ExchangeConfig] = Field(min_length=1)
    redis: RedisConfig = RedisConfig()
    lake: LakeConfig = LakeConfig()
    athena: AthenaConfig = AthenaConfig()
    database: DatabaseConfig = DatabaseConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    replay: ReplayConfig = ReplayConfig()
    spawner: SpawnerConfig = SpawnerConfig()
    bus: BusConfig = BusConfig()
    featurizer: FeaturizerConfig = FeaturizerConfig()
    aggregator: AggregatorConfig = AggregatorConfig()
    gateway: GatewayConfig = GatewayConfig()

    @model_validator(mode="after")
    def _featurizer_needs_bus(self) -> Config:
        if self.featurizer.enabled and not self.bus.enabled:
            raise ValueError("featurizer.enabled needs bus.enabled")
        if self.gateway.enabled and not self.bus.enabled:
            raise ValueError("gateway.enabled needs bus.enabled")
        return self

    @field_validator("exchanges")
    @classmethod
    def _known_exchanges(cls, value: dict[str, ExchangeConfig]) -> dict[str, ExchangeConfig]:
        for name, ex in value.items():
            if name not in SUPPORTED_EXCHANGES and not (ex.source == "replay" and _cryptofeed_exchange(name)):
                raise ValueError(f"unknown exchange {name!r}; supported: {', '.join(SUPPORTED_EXCHANGES)} "
                                 "(any cryptofeed exchange with source: replay)")
        return value

    def simulated(self) -> dict[str, ExchangeConfig]:
        return {name: ex for name, ex in self.exchanges.items() if ex.source == "simulator"}

    def served(self) -> dict[str, ExchangeConfig]:
        """Exchanges the simulator process serves: synthetic markets and recorded sessions."""
        return {name: ex for name, ex in self.exchanges.items() if ex.source in ("simulator", "replay")}

    def simulator_cert_dir(self) -> Path:
        return Path(self.simulator.cert_dir or Path(self.spawner.run_dir) / "sim")

    def simulator_urls(self) -> tuple[str, str]:
        """(https base, wss base) collectors reach the simulator at (``simulator.public_host`` and ``port``)."""
        where = f"{self.simulator.public_host}:{self.simulator.port}"
        return f"https://{where}", f"wss://{where}"

    def gateway_key_file(self) -> Path:
        return Path(self.gateway.server_key_file or Path(self.spawner.run_dir) / "gateway.key")

    def spill_root(self) -> Path:
        """Where writer processes keep batches Redis could not take (``redis.spill_dir``)."""
        return Path(self.redis.spill_dir or Path(self.spawner.run_dir) / "spill")

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _cryptofeed_exchange(name: str) -> bool:
    """Shaped like a cryptofeed exchange id (BINANCE_FUTURES). Whether cryptofeed knows it is checked by the
    collector: importing cryptofeed here would import aiohttp before roles set up TLS trust."""
    return name.replace("_", "").isalnum() and name == name.upper()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {msg}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def parse_config(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a mapping into a Config, raising ConfigError with key paths."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid config {source}: top level must be a mapping")
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config file (the embedded default when path is None)."""
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = (cfg_path.read_text() if path is not None
                else resources.files("data_feed").joinpath(DEFAULT_CONFIG_RESOURCE).read_text())
        raw = yaml.safe_load(text)
    except OSError as err:
        raise ConfigError(f"cannot read config {cfg_path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {cfg_path} is not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid config {cfg_path}: the file must be a mapping of sections (exchanges:, lake:, "
                          f"...), not a YAML {_yaml_kind(raw)}")
    data = dict(raw)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_config(data, str(cfg_path))


def _yaml_kind(value: object) -> str:
    return "list" if isinstance(value, list) else f"scalar ({type(value).__name__} {value!r:.40})"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
