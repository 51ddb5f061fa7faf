"""The deploy tests' shared fixtures; every test here is marked ``deploy`` (``make test-deploy``, CI runs it).
Tests that use the Docker engine get a longer timeout than the suite's 300 s: on a cold machine (no image
cache) their fixtures build the base images from Debian packages and then the project's images."""

from pathlib import Path

import pytest

from tests.deploy.docker import docker

__all__ = ["docker"]

HERE = Path(__file__).resolve().parent
DOCKER_TEST_TIMEOUT_SECONDS = 2700  # a cold build of every image, then `compose up --wait` (its own 1200 s bound)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.deploy)
            if item.get_closest_marker("docker") is not None:
                item.add_marker(pytest.mark.timeout(DOCKER_TEST_TIMEOUT_SECONDS))
