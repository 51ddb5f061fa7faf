"""terraform/ under the real terraform (AWS provider from the on-disk mirror) and checkov: every module formats,
initialises and validates; the example root module plans, applies and destroys against a local moto server;
between apply and destroy a real aggregator (`data-feed role aggregator`) lands slices from a real redis-server
into the bucket and Glue database Terraform made, and `data-feed query` reads them back; the Glue tables'
columns are generated from the lake's Arrow schemas and checked against them on the applied catalog."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import redis
import yaml

from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.schemas import LAKE_CHANNELS, PARTITION_KEYS
from data_feed.lake.glue_tables import TERRAFORM_FILE, render
from data_feed.lake.s3 import PARTITION_GLUE_TYPES, glue_columns
from tests.conftest import ROOT, default_config_dict, missing
from tests.deploy.tools import terraform_cli_config, tool
from tests.harness import CLI, wait_for
from tests.lake.conftest import BIN, _free_port, _wait

TERRAFORM = ROOT / "terraform"
EXAMPLE = "examples/complete"
MODULES = ("modules/lake_bucket", "modules/glue_catalog", "modules/athena_workgroup", "modules/ecr", "modules/iam")
TF_TIMEOUT_SECONDS = 300  # one init, plan, apply or destroy; apply waits ~1 min on S3 lifecycle consistency
LAKE_BUCKET, RESULTS_BUCKET, PREFIX, DATABASE = "tf-lake", "tf-athena-results", "data-feed/lake", "tf_lake"
RETENTION = {"l2_book": 30, "ticker": 90}
GRACE_DAYS = 2  # lake_bucket's lifecycle_grace_days default
NAMESPACE = "data-feed"
OIDC_URL = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123456789"
OIDC_ARN = f"arn:aws:iam::123456789012:oidc-provider/{OIDC_URL}"
T0 = 1_700_000_000.0  # 2023-11-14
SYMBOLS = ("BTC-USDT", "ETH-USDT")
TRADES_PER_SYMBOL = 500  # over 5 s of exchange time: 1 s slices, 2 partitions
AGGREGATOR_TIMEOUT_SECONDS = 120
PARALLEL = 3  # terraform runs at once (init, validate)
CHECKOV_RELIED_ON = {
    "CKV_AWS_21",  # S3 versioning
    "CKV_AWS_145",  # S3 encrypted with KMS by default
    "CKV2_AWS_6",  # S3 public access block
    "CKV2_AWS_61",  # S3 lifecycle configuration
    "CKV_AWS_300",  # S3 aborts failed multipart uploads
    "CKV_AWS_51",  # ECR immutable tags
    "CKV_AWS_163",  # ECR scan on push
    "CKV_AWS_136",  # ECR encrypted with KMS
    "CKV_AWS_82",  # Athena workgroup enforces its configuration
    "CKV_AWS_159",  # Athena workgroup encrypted
}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "TF_CLI_CONFIG_FILE": terraform_cli_config(), "TF_IN_AUTOMATION": "1", "TF_INPUT": "0",
           "CHECKPOINT_DISABLE": "1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_PROFILE", None)
    return env | (extra or {})


def _terraform(cwd: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([tool("terraform"), *args, "-no-color"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=TF_TIMEOUT_SECONDS)
    if check:
        assert result.returncode == 0, f"terraform {' '.join(args)} in {cwd}:\n{result.stdout[-3000:]}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of terraform/ (init writes .terraform/ and lock files there, not in the source tree), every module
    and the example initialised once from the provider mirror, with a shared plugin cache."""
    tmp = tmp_path_factory.mktemp("terraform")
    copy = tmp / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"))
    cache = tmp / "plugin-cache"
    cache.mkdir()
    env = _env({"TF_PLUGIN_CACHE_DIR": str(cache)})
    for directory in (EXAMPLE, *MODULES):  # one at a time: terraform's plugin cache is not safe for concurrent
        _terraform(copy / directory, "init", "-backend=false", "-input=false", env=env)  # inits ("file exists")
    yield copy, env


def test_terraform_files_are_formatted() -> None:
    result = subprocess.run([tool("terraform"), "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM)],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_and_the_example_validate(workspace: tuple[Path, dict[str, str]]) -> None:
    copy, env = workspace

    def validate(directory: str) -> tuple[str, dict[str, Any]]:
        result = _terraform(copy / directory, "validate", "-json", env=env, check=False)
        return directory, json.loads(result.stdout)

    with ThreadPoolExecutor(PARALLEL) as pool:  # each run loads the provider's schema: seconds of CPU
        reports = dict(pool.map(validate, [*MODULES, EXAMPLE]))
    assert sorted(reports) == sorted([*MODULES, EXAMPLE])
    for directory, report in reports.items():
        assert report["valid"] and report["warning_count"] == 0, (directory, report["diagnostics"])


def test_glue_tables_file_is_what_the_generator_makes_from_the_lake_schemas(tmp_path: Path) -> None:
    committed = (ROOT / TERRAFORM_FILE).read_text()
    assert committed == render(), "regenerate: .venv/bin/python -m data_feed.lake.glue_tables --terraform"
    argv = [str(BIN / "python"), "-m", "data_feed.lake.glue_tables", "--terraform", str(tmp_path / "t.tf.json")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.tf.json").read_text() == committed
    tables = json.loads(committed)["locals"]["lake_tables"]
    assert list(tables) == list(LAKE_CHANNELS)
    assert {ch: {c["name"]: c["type"] for c in cols} for ch, cols in tables.items()} == {
        ch: glue_columns(ch) for ch in LAKE_CHANNELS}


def test_checkov_passes_on_terraform_with_every_skip_justified() -> None:
    # the operator's command (`checkov -d terraform --framework terraform --quiet --compact`) without --quiet, which
    # leaves the passed checks out of the JSON report; --skip-download: no network for the guideline links
    result = subprocess.run([tool("checkov"), "-d", str(TERRAFORM), "--framework", "terraform", "--compact",
                             "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=180,
                            env=_env({"BC_SKIP_MAPPING": "TRUE"}))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    checks = report["results"]
    assert checks["failed_checks"] == []
    passed = {c["check_id"] for c in checks["passed_checks"]}
    assert passed >= CHECKOV_RELIED_ON, CHECKOV_RELIED_ON - passed
    for skipped in checks["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 30, f"{skipped['check_id']} in {skipped['file_path']}: skipped without a reason"


@pytest.fixture()
def moto(tmp_path: Path) -> Iterator[str]:
    if not (BIN / "moto_server").exists():
        missing("moto_server (moto[server]) not installed: make install")
    port = _free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: boto3.client("sts", endpoint_url=url, **_AWS).get_caller_identity(), "moto server", proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_AWS: dict[str, Any] = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}


def _client(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, **_AWS)  # type: ignore[call-overload]


def _tfvars(url: str) -> dict[str, Any]:
    return {"lake_bucket": LAKE_BUCKET, "results_bucket": RESULTS_BUCKET, "lake_prefix": PREFIX,
            "glue_database": DATABASE, "retention_days": RETENTION, "bytes_scanned_cutoff_per_query": 10 * 2**30,
            "oidc_provider_arn": OIDC_ARN, "oidc_provider_url": f"https://{OIDC_URL}", "namespace": NAMESPACE,
            "force_destroy": True, "endpoints": dict.fromkeys(("s3", "glue", "athena", "iam", "sts", "ecr"), url)}


def _assert_applied(url: str, out: dict[str, Any]) -> None:
    """What Terraform made, read back from the server."""
    s3 = _client("s3", url)
    assert s3.get_bucket_versioning(Bucket=LAKE_BUCKET)["Status"] == "Enabled"
    sse = s3.get_bucket_encryption(Bucket=LAKE_BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    block = s3.get_public_access_block(Bucket=LAKE_BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=LAKE_BUCKET)["Rules"]}
    for channel, days in RETENTION.items():
        rule = rules[f"retention-{channel}"]
        assert rule["Filter"]["Prefix"] == f"{PREFIX}/{channel}/" and rule["Expiration"]["Days"] == days + GRACE_DAYS
    assert rules["noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    glue = _client("glue", url)
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=DATABASE)["TableList"]}
    assert sorted(tables) == sorted(LAKE_CHANNELS)
    for channel, table in tables.items():
        sd = table["StorageDescriptor"]
        assert {c["Name"]: c["Type"] for c in sd["Columns"]} == glue_columns(channel), channel
        assert [c["Name"] for c in sd["Columns"]] == list(glue_columns(channel)), channel
        assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [
            (k, PARTITION_GLUE_TYPES[k]) for k in PARTITION_KEYS]
        assert sd["Location"] == f"s3://{LAKE_BUCKET}/{PREFIX}/{channel}/"
        assert table["Parameters"]["projection.enabled"] == "false"
    wg = _client("athena", url).get_work_group(WorkGroup=out["athena_workgroup"])["WorkGroup"]["Configuration"]
    assert wg["EnforceWorkGroupConfiguration"] and wg["BytesScannedCutoffPerQuery"] == 10 * 2**30
    assert wg["ResultConfiguration"]["OutputLocation"] == f"s3://{RESULTS_BUCKET}/results/"
    repo = _client("ecr", url).describe_repositories(repositoryNames=["data-feed"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"]
    assert repo["repositoryUri"] == out["ecr_repository_url"]
    iam = _client("iam", url)
    for name, arn in out["role_arns"].items():
        role = iam.get_role(RoleName=arn.rsplit("/", 1)[1])["Role"]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        condition = trust["Statement"][0]["Condition"]["StringEquals"]
        assert condition[f"{OIDC_URL}:sub"] == f"system:serviceaccount:{NAMESPACE}:data-feed-{name}"
        assert trust["Statement"][0]["Principal"]["Federated"] == OIDC_ARN


def _fill(client: redis.Redis) -> None:
    """Trades of two symbols over 5 s of exchange time, 50 records an entry."""
    rows = [(sym, T0 + i / 100, T0 + i / 100 + 0.001, i, None, "buy" if i % 3 else "sell", 100.0 + i % 17, 0.5)
            for i in range(TRADES_PER_SYMBOL) for sym in SYMBOLS]
    for k in range(0, len(rows), 50):
        client.xadd(stream_key("BINANCE", "trades"), encode_batch("trades", rows[k:k + 50]))  # type: ignore[arg-type]


def _config(tmp_path: Path, redis_url: str, url: str, out: dict[str, Any]) -> Path:
    data = default_config_dict()
    data["exchanges"] = {"BINANCE": {"source": "simulator", "trades": {"symbols": list(SYMBOLS)}}}
    data["redis"]["url"] = redis_url
    s3 = out["data_feed_config"]["lake"]["s3"] | {"endpoint_url": url, "glue_endpoint_url": url}
    data["lake"].update(root=str(tmp_path / "lake"), slice_seconds=1, allowed_lateness_seconds=0, s3=s3,
                        retention_days=out["data_feed_config"]["lake"]["retention_days"])
    data["athena"] = out["data_feed_config"]["athena"]
    data["spawner"].update(run_dir=str(tmp_path / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp_path / 'run' / 'data-feed.db'}"
    data["featurizer"]["enabled"] = False
    data["bus"]["enabled"] = False
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _partitions(url: str) -> list[tuple[str, ...]]:
    found = _client("glue", url).get_partitions(DatabaseName=DATABASE, TableName="trades")["Partitions"]
    return sorted(tuple(p["Values"]) for p in found)


def _aggregate(config: Path, url: str, tmp_path: Path) -> None:
    """`data-feed role aggregator` until it has registered both partitions in Glue; then SIGTERM, as Kubernetes
    stops it, and it lands what is still open."""
    env = _env()
    log = tmp_path / "aggregator.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([CLI, "role", "aggregator", "--config", str(config)], stdout=sink,
                                stderr=subprocess.STDOUT, env=env)
        try:
            want = [("BINANCE", sym, "2023-11-14") for sym in SYMBOLS]
            wait_for(lambda: proc.poll() is not None or _partitions(url) == want, AGGREGATOR_TIMEOUT_SECONDS,
                     "the aggregator registering both partitions", interval=0.5)
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=AGGREGATOR_TIMEOUT_SECONDS) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _tables(url: str) -> dict[str, Any]:
    """Every table definition of the database, with its version history."""
    glue = _client("glue", url)
    return {t["Name"]: (t, glue.get_table_versions(DatabaseName=DATABASE, TableName=t["Name"])["TableVersions"])
            for t in glue.get_tables(DatabaseName=DATABASE)["TableList"]}


def _gone(call: Any, codes: tuple[str, ...]) -> bool:
    try:
        call()
    except botocore.exceptions.ClientError as err:
        return err.response["Error"]["Code"] in codes
    return False


def test_example_applies_on_moto_an_aggregator_lands_slices_query_reads_them_and_destroy_removes_all(
        workspace: tuple[Path, dict[str, str]], moto: str, redis_url: str, tmp_path: Path) -> None:
    copy, env = workspace
    example = copy / EXAMPLE
    (tmp_path / "moto.tfvars.json").write_text(json.dumps(_tfvars(moto)))
    common = ["-input=false", f"-var-file={tmp_path / 'moto.tfvars.json'}", f"-state={tmp_path / 'tf.tfstate'}"]
    started = time.monotonic()
    plan = _terraform(example, "plan", *common, f"-out={tmp_path / 'tfplan'}", env=env).stdout
    tables = {line.split("]", 1)[0] + "]" for line in plan.splitlines()
              if "# module.glue_catalog.aws_glue_catalog_table.channel[" in line and "will be created" in line}
    assert tables == {f'  # module.glue_catalog.aws_glue_catalog_table.channel["{ch}"]' for ch in LAKE_CHANNELS}, plan
    assert re.search(r"Plan: \d+ to add, 0 to change, 0 to destroy", plan), plan
    _terraform(example, "apply", "-input=false", f"-state={tmp_path / 'tf.tfstate'}", str(tmp_path / "tfplan"), env=env)
    applied = time.monotonic()
    out = {k: v["value"] for k, v in json.loads(
        _terraform(example, "output", "-json", f"-state={tmp_path / 'tf.tfstate'}", env=env).stdout).items()}
    assert (out["bucket"], out["prefix"], out["glue_database"], out["region"]) == (
        LAKE_BUCKET, PREFIX, DATABASE, "us-east-1")
    assert set(out["role_arns"]) == {"writer", "compactor", "reader"}
    _assert_applied(moto, out)

    before = _tables(moto)
    config = _config(tmp_path, redis_url, moto, out)
    _fill(redis.Redis.from_url(redis_url))
    _aggregate(config, moto, tmp_path)
    assert not list((tmp_path / "lake").glob("**/*.parquet"))  # everything went to the bucket
    keys = [o["Key"] for o in _client("s3", moto).list_objects_v2(Bucket=LAKE_BUCKET)["Contents"]]
    assert keys and all(k.startswith(f"{PREFIX}/trades/exchange=BINANCE/symbol=") for k in keys), keys
    sql = "select symbol, count(*) n, count(distinct id) ids from trades group by symbol order by symbol"
    query = subprocess.run([CLI, "query", sql, "--format", "csv", "--config", str(config)], capture_output=True,
                           text=True, timeout=120, env=_env())
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines() == ["symbol,n,ids", *(f"{s},{TRADES_PER_SYMBOL},{TRADES_PER_SYMBOL}"
                                                           for s in SYMBOLS)]
    # the aggregator registered partitions in Terraform's tables and left the tables as Terraform made them
    # (awswrangler's create_parquet_table in mode append updates a table only when its definition differs)
    assert _tables(moto) == before
    _terraform(example, "destroy", "-auto-approve", "-refresh=false", *common, env=env)
    s3, glue = _client("s3", moto), _client("glue", moto)
    assert _gone(lambda: s3.head_bucket(Bucket=LAKE_BUCKET), ("404", "NoSuchBucket"))
    assert _gone(lambda: s3.head_bucket(Bucket=RESULTS_BUCKET), ("404", "NoSuchBucket"))
    assert _gone(lambda: glue.get_database(Name=DATABASE), ("EntityNotFoundException",))
    assert _client("iam", moto).list_roles()["Roles"] == []
    assert _client("ecr", moto).describe_repositories()["repositories"] == []
    assert json.loads((tmp_path / "tf.tfstate").read_text())["resources"] == []
    print(f"plan+apply {applied - started:.0f} s, aggregate+query+destroy {time.monotonic() - applied:.0f} s")
