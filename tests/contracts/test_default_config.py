"""The embedded default config is package data: an installed wheel finds it, and the documented copy matches."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from data_feed.contracts.config import DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_RESOURCE, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_COPY = ROOT / "configs" / "data-feed-config.yaml"
PACKAGED = ROOT / "data_feed" / DEFAULT_CONFIG_RESOURCE
WHEEL_BUILD_TIMEOUT_SECONDS = 600  # compiles the Cython kernels on a shared machine


def test_the_documented_copy_is_identical_to_the_packaged_default() -> None:
    assert DOCUMENTED_COPY.read_bytes() == PACKAGED.read_bytes(), (
        f"{DOCUMENTED_COPY} and {PACKAGED} differ: edit one, copy it over the other")


def test_the_default_is_loaded_from_the_package() -> None:
    assert DEFAULT_CONFIG_PATH.resolve() == PACKAGED.resolve()
    assert load_config() == load_config(DOCUMENTED_COPY)


@pytest.mark.slow
def test_a_built_wheel_ships_the_default_config_and_loads_it_outside_the_source_tree(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
                            str(ROOT)], capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT_SECONDS)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("data_feed-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        member = f"data_feed/{DEFAULT_CONFIG_RESOURCE}"
        assert member in zf.namelist()
        assert zf.read(member) == PACKAGED.read_bytes()
        unpacked = tmp_path / "site"
        zf.extractall(unpacked)
    # the unpacked wheel first on the path, run from a directory with no configs/: the default must come
    # from the package itself
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import data_feed.contracts.config as c; cfg = c.load_config(); "
             "print(c.__file__); print(c.DEFAULT_CONFIG_PATH); print(sorted(cfg.exchanges))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    module_file, default_path, exchanges = run.stdout.splitlines()
    assert Path(module_file).is_relative_to(unpacked), module_file
    assert Path(default_path).is_relative_to(unpacked), default_path
    assert exchanges == str(sorted(load_config(DOCUMENTED_COPY).exchanges))
