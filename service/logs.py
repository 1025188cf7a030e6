"""Logging: journald-friendly text lines by default, JSON lines as an option.

Under systemd (JOURNAL_STREAM set) each line starts with a syslog priority such as ``<4>``,
which journald turns into the entry's priority; elsewhere lines carry a timestamp instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the config (pydantic-settings, ~0.25 s) stays out of clients' start
    from edxlive.service.config import LoggingConfig

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``. journald makes one entry per line, so a traceback's every
    line carries the priority too: ``journalctl -p err`` then shows the whole of it."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    # Python warnings from libraries become log records, so stderr stays one format (JSON or journal).
    logging.captureWarnings(True)


# Third-party warnings that say nothing to a microscopist about their data (the same ones pyproject's
# pytest filterwarnings documents): RosettaSciIO's .zspy writer on zarr 2, and exspy importing
# HyperSpy's lazy signals by their old path.
_THIRD_PARTY_NOISE = (".*NestedDirectoryStore.*", "Importing `.*` from `hyperspy.* is deprecated")


def quiet_third_party_warnings() -> None:
    """Called by the CLI and by each analysis worker (a spawned process starts with no filters)."""
    import warnings

    for pattern in _THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
