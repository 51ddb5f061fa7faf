"""The deploy tests' shared fixtures."""

from tests.deploy.docker import docker

__all__ = ["docker"]
