"""Mistakes a user makes on the command line end in one message naming the problem and a non-zero exit, never a
traceback, an invented result or a created directory: wrong --lake paths, config files that are not mappings,
channels and symbols an exchange does not offer, empty SQL, bad option values, an unwritable lake root, a busy
http port, an empty backfill period."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from data_feed.cli import app
from data_feed.contracts.schemas import LAKE_CHANNELS
from featurizer.cli import app as featurizer_app
from tests.conftest import default_config_dict, make_config
from tests.lakes import T0, cli, land, make_writable, trade_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, redis_server: object) -> Path:
    tmp = tmp_path_factory.mktemp("cli-errors")
    cfg = make_config(tmp, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})
    return land(cfg, redis_server.url, "BINANCE", "trades", trade_rows("BTC-USDT", 300))  # type: ignore[attr-defined]


def _config_file(tmp_path: Path, data: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_config(tmp_path: Path, **changes: object) -> dict[str, object]:
    data = default_config_dict()
    data["lake"]["root"] = str(tmp_path / "lake")
    data["spawner"].update(run_dir=str(tmp_path / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp_path / 'df.db'}"
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def _wrong_lakes(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a lake\n")
    return {"typo": tmp_path / "lkae", "empty": tmp_path / "empty", "file": tmp_path / "a-file"}


COMMANDS = {
    "query": (app, ["query", "select count(*) from trades", "--lake"]),
    "book": (app, ["book", "BINANCE", "BTC-USDT", "--at", str(T0), "--lake"]),
    "lake expire": (app, ["lake", "expire", "--lake"]),
    "lake compact": (app, ["lake", "compact", "--older-than", "0s", "--lake"]),
    "featurizer backfill": (featurizer_app, ["backfill", "--from", str(T0), "--to", str(T0 + 60), "--lake"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("wrong", ["typo", "empty", "file"])
def test_a_wrong_lake_says_no_lake_at_it_exits_2_and_creates_nothing(tmp_path: Path, command: str,
                                                                     wrong: str) -> None:
    path = _wrong_lakes(tmp_path)[wrong]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    typer_app, args = COMMANDS[command]
    out = runner.invoke(typer_app, [*args, str(path)])
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith(f"error: no lake at {path}: "), out.stderr
    assert {"typo": "no such directory", "empty": "no _catalog.sqlite", "file": "not a directory"}[wrong] in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created, not even the directory


def test_a_lake_copied_without_its_catalog_points_to_lake_repair(tmp_path: Path, lake: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lake, copy, ignore=shutil.ignore_patterns("_catalog.sqlite*"))
    out = runner.invoke(app, ["query", "select count(*) from trades", "--lake", str(copy)])
    assert out.exit_code == 2
    assert f"no lake at {copy}: no _catalog.sqlite; it holds lake files: `data-feed lake repair --lake {copy}`" \
        in out.stderr


@pytest.mark.parametrize(("text", "kind"), [("- BINANCE\n- COINBASE\n", "list"), ("42\n", "scalar"),
                                            ("just words\n", "scalar")])
def test_a_config_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = runner.invoke(app, ["status", "--config", str(path)])
    assert out.exit_code == 2
    assert f"error: invalid config {path}: the file must be a mapping of sections" in out.stderr
    assert f"not a YAML {kind}" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("sql", ["", ";", "  ; ;\n"])
def test_empty_sql_is_an_error_not_a_traceback(lake: Path, sql: str) -> None:
    for dialect in ("duckdb", "athena"):
        out = runner.invoke(app, ["query", sql, "--lake", str(lake), "--dialect", dialect])
        assert out.exit_code == 1, (dialect, out.stdout, out.stderr)
        assert out.stderr == "error: no SQL query given\n", (dialect, out.stderr)


def test_a_query_error_is_printed_once(lake: Path) -> None:
    out = cli("query", "select nope from trades", "--lake", str(lake))
    assert out.returncode == 1
    assert out.stderr.count("nope") == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr, \
        out.stderr


def test_backfill_into_a_missing_directory_names_it(tmp_path: Path, lake: Path) -> None:
    target = tmp_path / "no" / "such" / "features.parquet"
    out = runner.invoke(featurizer_app, ["backfill", "--from", str(T0), "--to", str(T0 + 3), "--lake", str(lake),
                                         "--out", str(target)])
    assert out.exit_code == 2
    assert out.stderr == f"error: --out {target}: no directory {target.parent} to write it in\n"
    assert not (tmp_path / "no").exists()


def test_an_empty_backfill_period_says_so_and_writes_nothing(tmp_path: Path, lake: Path) -> None:
    target = tmp_path / "features.parquet"
    out = runner.invoke(featurizer_app, ["backfill", "--from", "2020-01-01", "--to", "2020-01-02",
                                         "--lake", str(lake), "--out", str(target)])
    assert out.exit_code == 1
    assert ("no trades or l2_book rows of BINANCE, COINBASE in the lake at "
            f"{lake} from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z; nothing written") in out.stderr
    assert not target.exists()
    full = runner.invoke(featurizer_app, ["backfill", "--from", str(T0), "--to", str(T0 + 3), "--lake", str(lake),
                                          "--out", str(target)])
    assert full.exit_code == 0 and target.exists(), full.stderr


@pytest.mark.parametrize("speed", ["fast", "0", "-2", "inf"])
def test_a_bad_replay_speed_names_the_option(tmp_path: Path, speed: str) -> None:
    out = runner.invoke(app, ["replay", str(tmp_path / "session.jsonl"), "--speed", speed])
    assert out.exit_code == 2
    assert "--speed" in out.stderr and f"'{speed}': expected a number > 0" in out.stderr, out.stderr


@pytest.mark.parametrize("command", ["run", "record"])
@pytest.mark.parametrize("duration", ["-5", "0"])
def test_a_duration_not_above_zero_is_rejected(tmp_path: Path, command: str, duration: str) -> None:
    extra = ["--out", str(tmp_path / "rec")] if command == "record" else []
    out = runner.invoke(app, [command, *extra, "--duration", duration])
    assert out.exit_code == 2
    assert "--duration" in out.stderr and "expected a number of seconds > 0" in out.stderr, out.stderr
    assert not (tmp_path / "rec").exists()


def test_a_misspelled_retention_channel_is_a_config_error(tmp_path: Path) -> None:
    path = _config_file(tmp_path, _run_config(tmp_path, lake__retention_days={"trades": 30, "tardes": 3}))
    out = runner.invoke(app, ["lake", "expire", "--config", str(path)])
    assert out.exit_code == 2
    assert "lake.retention_days: Value error, retention_days: 'tardes' is not a lake channel; known: " \
        + ", ".join(LAKE_CHANNELS) in out.stderr


def test_channels_and_symbols_an_exchange_does_not_offer_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    data = _run_config(tmp_path)
    data["exchanges"] = {
        "BINANCE": {"trades": {"symbols": ["BTC-USDT"]}, "funding": {"symbols": ["BTC-USDT"]}},
        "COINBASE": {"trades": {"symbols": ["BTC-USD", "FOO-BAR"]}},
        "BINANCE_FUTURES": {"trades": {"symbols": ["BTC-USDT"]}},  # a spot symbol on the futures venue
        "BYBIT": {"funding": {"symbols": ["BTC-USDT"]}},  # Bybit spot has no funding
        "OKX": {"trades": {"symbols": ["BTC-USDT-PERP"]}, "funding": {"symbols": ["BTC-USDT-PERP"]}},  # offered
    }
    path = _config_file(tmp_path, data)
    out = cli("run", "--config", str(path), "--duration", "5", "--no-status", timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == f"error: invalid config {path}:"
    assert lines[1:] == [
        "  exchanges.BINANCE.funding: BINANCE offers no funding channel (its cryptofeed class has trades, l2_book, "
        "ticker, candles)",
        "  exchanges.COINBASE.trades.symbols: FOO-BAR is not listed by the simulated COINBASE for trades (it lists "
        "BTC-USD, ETH-USD, SOL-USD)",
        "  exchanges.BINANCE_FUTURES.trades.symbols: BTC-USDT is not listed by the simulated BINANCE_FUTURES for "
        "trades (it lists BTC-USDT-PERP, ETH-USDT-PERP, SOL-USDT-PERP)",
        "  exchanges.BYBIT.funding.symbols: BTC-USDT is not listed by the simulated BYBIT for funding (it lists "
        "BTC-USDT-PERP, ETH-USDT-PERP, SOL-USDT-PERP)",
    ]
    assert not list((tmp_path / "run").rglob("*.log")) and not (tmp_path / "run" / "spawner.json").exists()
    assert not (tmp_path / "lake").exists()  # no role started, no lake made


def test_an_unwritable_lake_root_fails_before_any_role_starts(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    root.mkdir()
    root.chmod(0o555)
    try:
        path = _config_file(tmp_path, _run_config(tmp_path))
        out = cli("run", "--config", str(path), "--duration", "5", "--no-status", unprivileged=True, timeout=60)
    finally:
        make_writable(root)
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"error: lake.root {root} is not a writable directory: Permission denied\n"
    assert not (tmp_path / "run").exists()  # no run directory, no role, no log


def test_a_lake_root_under_a_file_fails_before_any_role_starts(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = _config_file(tmp_path, _run_config(tmp_path, lake__root=str(tmp_path / "a-file" / "lake")))
    out = cli("run", "--config", str(path), "--duration", "5", "--no-status", timeout=60)
    assert out.returncode == 2
    assert out.stderr == f"error: lake.root {tmp_path / 'a-file' / 'lake'} is not a writable directory: " \
                         f"{tmp_path / 'a-file'} is not a directory\n"
    assert not (tmp_path / "run").exists()


def test_an_http_port_in_use_fails_before_any_role_starts_naming_port_and_key(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = _config_file(tmp_path, _run_config(tmp_path, spawner__http_port=port))
        out = cli("run", "--config", str(path), "--duration", "5", "--no-status", timeout=60)
    assert out.returncode == 2
    assert out.stderr == (f"error: spawner.http_port {port} is in use: stop what holds it, or set "
                          "spawner.http_port to a free port (0 picks one)\n")
    assert not (tmp_path / "run").exists()


def test_query_help_lists_every_table_and_run_help_names_the_featurizer() -> None:
    wide = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}
    query_help = runner.invoke(app, ["query", "--help"], env=wide).stdout
    assert f"SQL over the views {', '.join(LAKE_CHANNELS)}" in " ".join(query_help.split())
    run_help = runner.invoke(app, ["run", "--help"], env=wide).stdout
    assert "(simulator, collectors, aggregator, featurizer)" in " ".join(run_help.split())
