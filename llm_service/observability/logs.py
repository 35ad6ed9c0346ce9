"""Log lines: JSON (one object per line) or text, each with the request id of its request.

The request id lives in a ``ContextVar`` set when a request starts, so every line logged
while serving it (here, in the upstream client, in LangChain) carries it without passing it
around. One access line per request goes to the ``llm_service.access`` logger: method,
route, status, timings, tokens and the request id, never the prompt or any credential.

One record is one line in both formats: JSON escapes line breaks, and the text format
writes them as ``\\n`` and ``\\r`` (a model server's message with a line break in it
would otherwise forge a log line of its choosing).
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from typing import Any

from llm_service.context import request_id
from llm_service.settings import Settings

access_log = logging.getLogger("llm_service.access")

_VALID_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def new_request_id(incoming: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new random id."""
    if incoming:
        text = incoming.decode("latin-1")
        if _VALID_ID.fullmatch(text):
            return text
    return secrets.token_hex(16)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (for both formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def json_formatter() -> logging.Formatter:
    """python-json-logger on orjson: time, level, logger, message, request_id and extras."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.orjson import OrjsonFormatter

    return OrjsonFormatter(
        "%(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured copy
    )


class OneLineFormatter(logging.Formatter):
    """The text format, each record on one line: line breaks in the message, the
    exception's text and the stack are written as ``\\n`` and ``\\r``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" in text or "\r" in text:
            text = text.replace("\r", "\\r").replace("\n", "\\n")
        return text


def handler_for(settings: Settings, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) in the configured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(OneLineFormatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings) -> None:
    """Root logger: one handler in ``LLM_LOG_FORMAT`` at ``LLM_LOG_LEVEL`` (or the reference's
    ``OPEA_LOGGER_LEVEL``, which settings read when it is unset); uvicorn's loggers propagate
    to it, so its lines come out in the same format."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler_for(settings))
    root.setLevel(settings.log_level)
