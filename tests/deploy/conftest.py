"""The deploy tests' shared fixtures; every test here is marked ``deploy`` (``make test-deploy``, CI runs it)."""

from pathlib import Path

import pytest

from tests.deploy.docker import docker

__all__ = ["docker"]

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.deploy)
