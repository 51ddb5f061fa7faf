"""Both Dockerfiles built for real with BuildKit on bases made from Debian packages (no registry), and the
production image run as operators run it: non-root, read-only root filesystem, HEALTHCHECK reaching healthy."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.deploy.docker import ROOT, Docker
from tests.harness import wait_for

pytestmark = pytest.mark.docker
PROD_TAG = "data-feed:test"
DEV_TAG = "data-feed-dev:test"
CONFIG = ROOT / "configs" / "compose.yaml"
HEALTHY_TIMEOUT_SECONDS = 120  # start period 30 s, checks every 15 s


@pytest.fixture(scope="module")
def prod_image(docker: Docker) -> str:
    docker.build(PROD_TAG, ROOT, ROOT / "Dockerfile", always=True)
    return PROD_TAG


def test_dev_image_builds_and_runs_the_mounted_source_editable(docker: Docker) -> None:
    docker.build(DEV_TAG, ROOT, ROOT / "Dockerfile-dev", always=True)
    probe = "import data_feed, featurizer._kernels; print(data_feed.__file__)"
    done = docker.run("run", "--rm", "-v", f"{ROOT / 'data_feed'}:/src/data_feed:ro", "--entrypoint", "python",
                      DEV_TAG, "-c", probe, timeout=120)
    assert done.stdout.strip() == "/src/data_feed/__init__.py", done.stdout


def test_production_image_has_no_compiler_and_declares_user_volumes_and_healthcheck(docker: Docker,
                                                                                      prod_image: str) -> None:
    config = json.loads(docker.run("image", "inspect", prod_image).stdout)[0]["Config"]
    assert config["User"] == "10001"
    assert set(config["Volumes"]) == {"/data", "/tmp"}
    assert config["Entrypoint"] == ["data-feed"]
    assert "/health" in " ".join(config["Healthcheck"]["Test"])
    which = "import shutil; print([c for c in ('gcc', 'cc', 'g++', 'c++', 'cython') if shutil.which(c)])"
    done = docker.run("run", "--rm", "--entrypoint", "python", prod_image, "-c", which, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout


def test_production_image_runs_a_role_non_root_on_a_read_only_root_and_turns_healthy(docker: Docker,
                                                                                      prod_image: str) -> None:
    name = f"data-feed-test-{uuid.uuid4().hex[:8]}"
    docker.run("run", "-d", "--name", name, "--read-only", "-v", f"{CONFIG}:/etc/data-feed/config.yaml:ro",
               prod_image, "role", "simulator", "--config", "/etc/data-feed/config.yaml",
               "--http-port", "9100", "--http-host", "0.0.0.0")
    try:
        def status() -> str | None:
            state = json.loads(docker.run("inspect", name).stdout)[0]["State"]
            assert state["Running"], docker.run("logs", name, check=False).stderr[-3000:]
            return state["Health"]["Status"] if state["Health"]["Status"] == "healthy" else None

        wait_for(status, HEALTHY_TIMEOUT_SECONDS, "the simulator container's HEALTHCHECK to report healthy", 1.0)
        assert docker.run("exec", name, "id", "-u").stdout.strip() == "10001"
        root_write = docker.run("exec", name, "touch", "/usr/local/probe", check=False)
        assert root_write.returncode != 0 and "Read-only file system" in root_write.stderr, root_write
        mounts = json.loads(docker.run("inspect", name).stdout)[0]["Mounts"]
        assert {m["Destination"] for m in mounts} == {"/data", "/tmp", "/etc/data-feed/config.yaml"}
        cert = docker.run("exec", name, "ls", "/data/run/sim").stdout  # written to the /data volume
        assert cert.strip(), "the simulator wrote no certificate under /data"
    finally:
        docker.run("rm", "-f", "-v", name, check=False)
