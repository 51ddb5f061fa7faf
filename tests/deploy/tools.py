"""Where the deploy tests find their tools: the cache `.ci/deploy-tools` fills, then PATH.

A missing tool fails the test under CI=true (`.ci/run` installs them all) and skips it elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TOOLS_DIR = Path(os.environ.get("DATA_FEED_DEPLOY_TOOLS", Path.home() / ".cache" / "data-feed-deploy-tools"))
INSTALL_HINT = "run .ci/deploy-tools to install it"


def _missing(what: str) -> None:
    message = f"{what} not found in {TOOLS_DIR / 'bin'} or on PATH; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """The absolute path of `name` (helm, kubectl, checkov, kubernetes-validate, hadolint, yamllint, terraform,
    node)."""
    cached = TOOLS_DIR / "bin" / name
    if cached.exists() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found is None:
        _missing(name)
    assert found is not None
    return found


def terraform_cli_config() -> str:
    """The CLI config pointing terraform at the on-disk AWS provider mirror, written by .ci/deploy-tools."""
    named = os.environ.get("TF_CLI_CONFIG_FILE")
    config = Path(named) if named and Path(named).is_file() else TOOLS_DIR / "terraformrc"  # a stale name: ours
    if not config.is_file():
        _missing(f"terraform CLI config {config}")
    return str(config)


def node_modules() -> Path:
    """The node_modules holding npm @kubernetes-models/prometheus-operator (upstream CRD validators)."""
    found = TOOLS_DIR / "node" / "node_modules"
    if not (found / "@kubernetes-models" / "prometheus-operator").is_dir():
        _missing("npm @kubernetes-models/prometheus-operator")
    tool("node")
    return found
