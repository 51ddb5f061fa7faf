"""One home per contract (issue 10, item 3): no contract literal spelled outside the module that defines it.

The source of ``data_feed/`` and ``featurizer/`` is parsed with ``ast`` and every string constant is checked,
so docstrings, comments and log message templates (the first argument of a logging call) do not count:
they describe contracts, they do not define them. ``data_feed/sim/`` is exempt as a whole: the simulator
speaks each venue's own wire protocol, whose channel names (``"ticker"``, ``"trades"``) and checksum
fields are the venue's, not ours, and it must not import the pipeline's contracts to stay an independent
counterpart of the collectors. Every other exemption is listed below with its reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("data_feed", "featurizer")
SIM_DIR = "data_feed/sim/"  # venue wire protocols: see the module docstring
LOGGING_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})

SCHEMAS = "data_feed/contracts/schemas.py"
CACHE = "data_feed/cache/streams.py"
LAKE = "data_feed/lake/layout.py"
RUNTIME = "data_feed/contracts/rundir.py"

CHANNELS = ("trades", "l2_book", "ticker", "funding", "open_interest", "liquidations", "candles", "gaps",
            "features")
GAP_REASONS = ("disconnect", "stall", "sequence_gap", "resync", "checksum", "bad_frame", "snapshot_failed",
               "slow_snapshot", "restart", "stopped", "overflow", "lost_entries")
COLLECTOR_STATE_FIELDS = ("started_at", "frames_received", "frames_open", "updated_at", "records_", "mark:")

# An exact string constant -> the one module allowed to spell it.
EXACT_HOMES: dict[str, str] = {
    **dict.fromkeys(CHANNELS, SCHEMAS),
    **dict.fromkeys(GAP_REASONS, SCHEMAS),
    **dict.fromkeys(COLLECTOR_STATE_FIELDS, CACHE),
    "%Y%m%dT%H%M%SZ": LAKE,  # slice stamp in lake file names
    "%Y-%m-%d": LAKE,  # the date= partition value
    "ready.json": RUNTIME,
    "sim-cert.pem": RUNTIME,
    "spawner.lock": RUNTIME,
    "runtime.json": RUNTIME,
    "spawner.json": RUNTIME,
    "effective-config.json": RUNTIME,
    "bus-publish.sock": "data_feed/bus/wire.py",
    "bus-subscribe.sock": "data_feed/bus/wire.py",
    "_catalog.sqlite": "data_feed/lake/catalog.py",
    "_maintenance.lock": "data_feed/lake/catalog.py",
    "_manifest.json": "data_feed/lake/s3_manifest.py",
}
# A substring of any string constant -> its home: Redis key prefixes.
SUBSTRING_HOMES = {"df:stream": CACHE, "df:collector": CACHE}
# Path-shaped pieces of f-strings (``f"{channel}/exchange={exchange}/"``): partition prefixes live in the lake.
PARTITION_PIECE = re.compile(r"(^|/)(exchange|symbol|date)=$")
PARTITION_HOME = LAKE
TIME_UNIT_NAME = re.compile(r"^(NS|US|MS)_PER_[A-Z]+$")
NS_PER_SECOND_VALUES = (10**9, 1e9)

# (module, literal) pairs that are another contract's values or a venue's, not ours spelled twice.
EXEMPT: dict[tuple[str, str], str] = {
    ("data_feed/contracts/config.py", "disconnect"): "a Fault kind the simulator injects (config.Fault), no gap reason",
    ("data_feed/contracts/config.py", "sequence_gap"): "a Fault kind (config.Fault), not a gap reason",
    ("data_feed/contracts/config.py", "stall"): "a Fault kind (config.Fault), not a gap reason",
    ("data_feed/collector/exchanges/coinbase.py", "ticker"):
        "Coinbase's own websocket channel name (cryptofeed's websocket_channels map), a wire name",
    ("data_feed/observability/dashboards.py", "features"): "the name of the features dashboard, not a channel",
    ("data_feed/access/db.py", "started_at"): "a column of the SQL runs table, not the collector state hash",
    ("data_feed/runtime/spawner.py", "started_at"): "a field of the spawner's own state file, not the collector hash",
    ("data_feed/access/tables.py", "updated_at"): "a column of the access tables (SQL), not the collector state",
    ("data_feed/access/store.py", "updated_at"): "a column of the access tables (SQL), not the collector state",
    ("data_feed/access/migrations/versions/0001_initial.py", "updated_at"):
        "a column of the access tables (SQL migration), not the collector state",
    ("data_feed/collector/writer.py", "frames_received"):
        "the frame counter attribute of the collector's feed (CollectorFeedMixin), read with getattr",
    ("data_feed/access/live.py", "10**9"): "a count (XPENDING's upper bound on entries), not nanoseconds",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def source_files() -> list[tuple[str, ast.Module]]:
    out = []
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(SIM_DIR):
                out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def ignored_constants(tree: ast.Module) -> set[int]:
    """Docstrings and log message templates: prose about contracts, not uses of them."""
    ignored: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ignored.add(id(first.value))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOGGING_METHODS and node.args):
            template = node.args[1] if node.func.attr == "log" and len(node.args) > 1 else node.args[0]
            for sub in ast.walk(template):
                ignored.add(id(sub))
    return ignored


def string_findings(rel: str, tree: ast.Module) -> Iterator[Finding]:
    ignored = ignored_constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in ignored:
            pieces = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            if rel != PARTITION_HOME and any("/" in p for p in pieces):
                for piece in pieces:
                    if PARTITION_PIECE.search(piece):
                        yield Finding(rel, node.lineno, f"partition prefix {piece!r} (home: {PARTITION_HOME})")
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in ignored:
            continue
        value = node.value
        home = EXACT_HOMES.get(value)
        if home is not None and home != rel and (rel, value) not in EXEMPT:
            yield Finding(rel, node.lineno, f"{value!r} (home: {home})")
        for part, part_home in SUBSTRING_HOMES.items():
            if part in value and part_home != rel:
                yield Finding(rel, node.lineno, f"{part!r} in {value!r} (home: {part_home})")


def time_unit_findings(rel: str, tree: ast.Module) -> Iterator[Finding]:
    if rel == SCHEMAS:
        return
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and type(node.value) in (int, float)
                and node.value in NS_PER_SECOND_VALUES):
            yield Finding(rel, node.lineno, f"nanoseconds per second spelled {node.value!r} (home: {SCHEMAS})")
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.left, ast.Constant)
                and node.left.value == 10 and isinstance(node.right, ast.Constant) and node.right.value == 9
                and (rel, "10**9") not in EXEMPT):
            yield Finding(rel, node.lineno, f"nanoseconds per second spelled 10**9 (home: {SCHEMAS})")
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and TIME_UNIT_NAME.match(target.id):
                yield Finding(rel, node.lineno, f"time unit {target.id} defined again (home: {SCHEMAS})")


def all_findings() -> list[Finding]:
    found: list[Finding] = []
    for rel, tree in source_files():
        found += string_findings(rel, tree)
        found += time_unit_findings(rel, tree)
    return sorted(found, key=str)


def test_no_contract_literal_outside_its_home() -> None:
    found = all_findings()
    assert not found, "contract literals outside their home:\n" + "\n".join(map(str, found))


def test_cython_kernels_define_no_time_unit_of_their_own() -> None:
    """The kernels are Cython, not parsed by ``ast``: a plain text check of their module-level definitions."""
    text = (ROOT / "featurizer" / "_kernels.pyx").read_text()
    assert not re.findall(r"^\s*(?:cdef\s+\w+\s+)?(?:NS|US|MS)_PER_\w+\s*=", text, re.MULTILINE)
    assert "1_000_000_000" not in text


def test_the_check_sees_what_it_looks_for() -> None:
    """The scanner itself: each kind of stray literal in a snippet is found, and prose about it is not."""
    snippet = '''
"""Docstring naming "trades" and ready.json is fine."""
import logging
LOG = logging.getLogger(__name__)
NS_PER_SECOND = 1_000_000_000
def f(exchange, channel):
    LOG.info("exchange=%s channel=trades: ok", exchange)
    key = f"df:stream:{exchange}:{channel}"
    path = f"{channel}/exchange={exchange}/"
    return ("l2_book", "sequence_gap", "ready.json", "frames_received", "%Y%m%dT%H%M%SZ", 1e9, 10**9, key, path)
'''
    tree = ast.parse(snippet)
    found = [*string_findings("data_feed/x.py", tree), *time_unit_findings("data_feed/x.py", tree)]
    whats = " | ".join(f.what for f in found)
    for expected in ("'l2_book'", "'sequence_gap'", "'ready.json'", "'frames_received'", "'%Y%m%dT%H%M%SZ'",
                     "'df:stream'", "partition prefix '/exchange='", "spelled 1000000000.0", "spelled 10**9",
                     "NS_PER_SECOND defined again"):
        assert expected in whats, (expected, whats)
    assert not any(f.line in (2, 7) for f in found), whats  # the docstring and the log template
    assert not list(string_findings(SCHEMAS, ast.parse('X = "trades"')))  # the home itself may spell it


MODULE_MAX_LINES = 420  # "about 400": a module a newcomer reads in a sitting (issue 10, item 5)
# Modules allowed to be longer, each with its reason. data_feed/sim/ is not exempt: its largest module
# (replay.py) is under the limit too.
LONG_MODULES: dict[str, str] = {}


def test_no_module_over_about_400_lines() -> None:
    long = {}
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MODULE_MAX_LINES and rel not in LONG_MODULES:
                long[rel] = lines
    assert not long, f"modules over {MODULE_MAX_LINES} lines (split them by concern): {long}"


# One lake seam (issue 10, item 4): what differs between the local lake and the lake on S3 is a method or an
# attribute of the store and catalog protocols, never a branch on their types.
LAKE_TYPES = frozenset({"LocalStore", "LocalCatalog", "S3Store", "GlueCatalog"})


def lake_type_checks(rel: str, tree: ast.AST) -> Iterator[str]:
    """``rel:line`` of every ``isinstance(x, T)`` whose ``T`` (or a member of a tuple or ``|`` of types) names
    a lake implementation, plain or qualified (``s3.GlueCatalog``)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                and len(node.args) == 2):
            continue
        names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
        if names & LAKE_TYPES:
            yield f"{rel}:{node.lineno}"


def test_no_isinstance_branch_on_lake_store_or_catalog_types() -> None:
    found = [hit for path in sorted((ROOT / "data_feed").rglob("*.py"))
             for hit in lake_type_checks(path.relative_to(ROOT).as_posix(), ast.parse(path.read_text()))]
    assert not found, f"branch on a lake type (use a protocol method or attribute instead): {found}"


def test_the_lake_type_check_sees_what_it_looks_for() -> None:
    sample = ("if isinstance(store, LocalStore): pass\n"
              "ok = isinstance(c, (int, s3.GlueCatalog))\n"
              "ok = isinstance(c, str | S3Store)\n"
              "ok = isinstance(c, LocalCatalog)\n"
              "ok = isinstance(c, Path)\n")
    assert list(lake_type_checks("x.py", ast.parse(sample))) == ["x.py:1", "x.py:2", "x.py:3", "x.py:4"]


def test_the_exchange_registries_name_the_same_exchanges_as_the_config() -> None:
    """One list of exchanges users may configure (config.SUPPORTED_EXCHANGES); the collector's quirk modules
    (keyed by cryptofeed's own ids) and the simulator's protocols (keyed by their names) cover exactly it."""
    from data_feed.collector.exchanges import EXCHANGE_MODULES
    from data_feed.contracts.config import SUPPORTED_EXCHANGES
    from data_feed.sim.server import PROTOCOLS

    assert len(set(SUPPORTED_EXCHANGES)) == len(SUPPORTED_EXCHANGES)
    assert set(EXCHANGE_MODULES) == set(SUPPORTED_EXCHANGES)
    assert set(PROTOCOLS) == set(SUPPORTED_EXCHANGES)
