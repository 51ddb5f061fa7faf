"""hadolint on both Dockerfiles: the real binary, warnings fail."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile-dev"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_image_is_non_root_with_healthcheck_and_data_feed_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text.split("\nFROM ")[-1]
    assert "USER 10001" in final_stage and "HEALTHCHECK" in final_stage and "/health" in final_stage
    assert 'ENTRYPOINT ["data-feed"]' in final_stage
    assert "gcc" not in final_stage, "no compiler in the final image"
    assert "# syntax=" not in text, "a syntax line pulls a frontend from a registry"
