"""Config loading: typed, frozen, unknown keys and bad values rejected with their key path."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from data_feed.contracts.config import ConfigError, load_config, parse_config
from tests.conftest import default_config_dict


def test_embedded_default_loads_both_simulated_exchanges() -> None:
    cfg = load_config()
    assert set(cfg.simulated()) == {"BINANCE", "COINBASE"}
    assert set(cfg.exchanges["BINANCE"].channels()) == {"trades", "l2_book", "ticker"}
    assert cfg.redis.url is None and cfg.database.url.startswith("sqlite")


def test_config_objects_are_frozen() -> None:
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.lake.slice_seconds = 5  # type: ignore[misc]


def test_misspelled_key_names_its_path(tmp_path: Path) -> None:
    data = default_config_dict()
    data["exchanges"]["BINANCE"]["l2_book"]["max_depht"] = 10
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "exchanges.BINANCE.l2_book.max_depht: unknown key" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("exchanges.BINANCE.l2_book.max_depth", 0,
         "exchanges.BINANCE.l2_book.max_depth: Input should be greater than 0"),
        ("lake.slice_seconds", "often", "lake.slice_seconds: Input should be a valid integer"),
        ("exchanges.BINANCE.trades.symbols", ["btcusdt"], "exchanges.BINANCE.trades.symbols"),
        ("redis.stream_maxlen", -1, "redis.stream_maxlen: Input should be greater than 0"),
    ],
)
def test_bad_values_name_their_key(dotted: str, value: object, expected: str) -> None:
    data = default_config_dict()
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


def test_unknown_exchange_and_empty_exchange_are_rejected() -> None:
    data = default_config_dict()
    data["exchanges"]["NOPE"] = data["exchanges"]["BINANCE"]
    with pytest.raises(ConfigError, match="unknown exchange 'NOPE'"):
        parse_config(data)
    data = default_config_dict()
    data["exchanges"]["BINANCE"] = {"source": "simulator"}
    with pytest.raises(ConfigError, match=r"exchanges\.BINANCE: Value error, subscribe to at least one"):
        parse_config(data)


def test_hash_is_stable_and_changes_with_content() -> None:
    a, b = load_config(), load_config()
    assert a.config_hash() == b.config_hash()
    changed = load_config(overrides={"lake.slice_seconds": 30})
    assert changed.config_hash() != a.config_hash()


def test_unreadable_and_non_yaml_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("exchanges: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
