"""The config init container of every data-feed pod: ``python render-config.py SOURCE TARGET [--set KEY=VALUE]
[--set-file KEY=PATH]``.

Reads the chart's config (the ConfigMap), sets this pod's own keys (the bus binds where the others connect)
and the URLs that come from Secrets mounted as files (so no secret is ever in a ConfigMap or the
environment), validates the result with data-feed's own ``load_config`` and writes it where the role
reads it. A config the program rejects stops
the pod here, with every bad key named, before the role starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from data_feed.contracts.config import ConfigError, load_config


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"error: {flag} {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def overrides(sets: list[str], set_files: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = dict(_pairs(sets, "--set"))
    for key, path in _pairs(set_files, "--set-file"):
        try:
            value = Path(path).read_text().strip()
        except OSError as err:
            raise SystemExit(f"error: {key}: cannot read {path} (its Secret?): {err.strerror}") from None
        if not value:
            raise SystemExit(f"error: {key}: {path} is empty (its Secret?)")
        found[key] = value
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-file", action="append", default=[], metavar="KEY=PATH")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.source, overrides(args.set, args.set_file))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.target.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    args.target.chmod(0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
