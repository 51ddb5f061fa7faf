"""Logging set-up shared by every process: one line per event, role and context in every line."""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s [{role} pid=%(process)d] %(name)s: %(message)s"


def setup_logging(role: str, level: str | None = None) -> None:
    """Log to stderr (the spawner sends each child's stderr to its own file)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(role=role)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("DATA_FEED_LOG_LEVEL", "INFO"))
    # cryptofeed logs every reconnect at WARNING with context (conn id); keep it, but not its debug chatter
    logging.getLogger("feedhandler").setLevel(logging.INFO)
