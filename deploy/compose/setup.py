"""The compose stacks' one-shot `setup` service, before any aggregator starts: saves the effective config with
its hash in the SQL database (what `data-feed run`'s spawner does at every start; roles run alone do not), and
with --create-bucket creates the lake bucket on the dev stack's S3 server (in production Terraform owns it).

    python /opt/data-feed/setup.py --config /etc/data-feed/config.yaml [--create-bucket]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from data_feed.access.db import make_engine, save_effective_config
from data_feed.contracts.config import load_config


def create_bucket(endpoint_url: str | None, region: str | None, bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"setup: bucket {bucket} created")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        print(f"setup: bucket {bucket} already there")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--create-bucket", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config)
    if args.create_bucket and cfg.lake.s3 is not None:
        create_bucket(cfg.lake.s3.endpoint_url, cfg.lake.s3.region, cfg.lake.s3.bucket)
    row = save_effective_config(make_engine(cfg.database.url), cfg)
    print(f"setup: config {cfg.config_hash()[:12]} saved as config_history row {row}")


if __name__ == "__main__":
    main()
