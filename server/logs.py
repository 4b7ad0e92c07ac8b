"""Structured logs: one JSON object per line on stderr, ``{"ts", "level", "event", ...fields}``."""

from __future__ import annotations

import json
import logging
import time

LOGGER = "fedurl.server"


class JsonLines(logging.Formatter):
    """Render a record as one JSON line; fields passed with ``event(...)`` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for record."""
        document = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
                    "level": record.levelname.lower(), "event": record.getMessage(),
                    **getattr(record, "fields", {})}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields) -> None:
    """Log one named event with its fields (and the current exception's traceback if exc_info)."""
    logging.getLogger(LOGGER).log(level, name, exc_info=exc_info, extra={"fields": fields})


def configure(level: str) -> None:
    """Send the server's events to stderr as JSON lines (once per process)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonLines) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLines())
        logger.addHandler(handler)
        logger.propagate = False
