"""Service logs: plain text (uvicorn's) or one JSON object per line (``DISCO_LOG_FORMAT=json``).

Every request gets an id: the client's ``X-Request-ID`` when it is a short token
(:data:`REQUEST_ID`: letters, digits, ``-_.:``, at most 128 characters), else a fresh uuid4 hex;
the response echoes it in ``X-Request-ID``. The access line of a request (logger
``teacher_service.access``, written by the app's guard middleware in both formats) carries
``request_id``, ``route`` (the template, e.g. ``/v1/stores/{name}``), ``method``, ``status``,
``duration_ms`` and, for embedding requests, ``images``, ``rows``, ``queue_ms`` and
``inference_ms``. In JSON mode uvicorn's own loggers go through the same formatter and its plain
access log is off (the service's access line replaces it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any

__all__ = [
    "ACCESS_LOGGER",
    "REQUEST_ID",
    "JsonFormatter",
    "log_config",
    "new_request_id",
    "request_id_of",
]

ACCESS_LOGGER = "teacher_service.access"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""Accepted client request ids (anything else is replaced, so logs stay one clean line)."""

# LogRecord attributes every record has: the rest are the `extra=` fields of the call.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC ISO-8601, ms), ``level``, ``logger``, ``msg``,
    every ``extra=`` field, and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _AccessText(logging.Formatter):
    """Text access line: ``<id> <method> <route> <status> <ms> ms [images, queue, inference]``."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        parts = [
            str(extra.get("request_id", "-")),
            str(extra.get("method", "")),
            str(extra.get("path", "")),
            str(extra.get("status", "")),
            f"{extra.get('duration_ms', 0):.1f} ms",
        ]
        if "images" in extra:
            parts.append(
                f"images={extra['images']} queue={extra.get('queue_ms', 0):.1f} ms "
                f"inference={extra.get('inference_ms', 0):.1f} ms"
            )
        return f"{self.formatTime(record)} access " + " ".join(parts)


# New ids: a random per-process prefix and a counter. Not uuid4: os.urandom per request took
# 1.6 ms of event-loop time per request on this VM under load (profiled with bench/service.py),
# and an id only has to be unique, not secret.
_PREFIX = os.urandom(10).hex()
_COUNTER = itertools.count()


def new_request_id() -> str:
    """A new request id: 32 hex digits, unique within this process (and, by its random
    20-digit prefix, across processes)."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: a valid client ``X-Request-ID`` header, else :func:`new_request_id`."""
    for key, value in headers:
        if key == b"x-request-id":
            text = value.decode("latin-1").strip()
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return new_request_id()


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``: the service's
    loggers and uvicorn's at ``level``, as text or as JSON lines on stderr."""
    level = level.upper()
    text = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    json_fmt = {"()": f"{__name__}.JsonFormatter"}
    formatter = json_fmt if log_format == "json" else text
    access = json_fmt if log_format == "json" else {"()": f"{__name__}._AccessText"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter, "access": access},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # The service's own access line (with request id and timings) replaces uvicorn's.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "teacher_service": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": level, "propagate": False},
            # Library warnings (logging.captureWarnings) and other loggers: the same format.
            "py.warnings": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
