"""The config init container of every data-feed pod: ``python render-config.py SOURCE TARGET [--set KEY=VALUE]
[--set-env KEY=ENVVAR]``.

Reads the chart's config (the ConfigMap), sets this pod's own keys (the bus binds where the others connect)
and the URLs that come from Secrets (so no secret is ever in a ConfigMap), validates the result with
data-feed's own ``load_config`` and writes it where the role reads it. A config the program rejects stops
the pod here, with every bad key named, before the role starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from data_feed.config import ConfigError, load_config


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"error: {flag} {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def overrides(sets: list[str], set_envs: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = dict(_pairs(sets, "--set"))
    for key, env in _pairs(set_envs, "--set-env"):
        if not os.environ.get(env):
            raise SystemExit(f"error: {key}: environment variable {env} is empty or unset (its Secret?)")
        found[key] = os.environ[env]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-env", action="append", default=[], metavar="KEY=ENVVAR")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.source, overrides(args.set, args.set_env))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.target.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    args.target.chmod(0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
