"""The Prometheus tools the observability tests run: found on PATH, or the test fails in CI and skips locally."""

from __future__ import annotations

import shutil

from tests.conftest import missing

INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus"


def require(tool: str) -> str:
    """Path of ``tool`` (``promtool``, ``prometheus``); without it: a failure in CI, a skip elsewhere."""
    path = shutil.which(tool)
    if path is not None:
        return path
    missing(f"{tool} is not installed (Debian: {INSTALL_HINT})")
