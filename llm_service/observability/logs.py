"""Log lines: JSON (one object per line) or text, each with the request id of its request.

The request id lives in a ``ContextVar`` set when a request starts, so every line logged
while serving it (here, in the upstream client, in LangChain) carries it without passing it
around. One access line per request goes to the ``llm_service.access`` logger: method,
route, status, timings, tokens and the request id, never the prompt or any credential.

One record is one line in both formats: JSON escapes line breaks, and the text format
writes them as ``\\n`` and ``\\r`` (a model server's message with a line break in it
would otherwise forge a log line of its choosing).

``configure_logging`` (``llm-service serve``) formats and writes off the event loop: the
root logger's handler only queues each record (with its request id), and a ``LogWriter``
thread formats what has queued up and writes it in one write. On the loop thread, a JSON
line and a write per request sat between two streams' frames, and a destination that
blocks (a full stderr pipe) would stop every stream; the thread still takes CPU under the
GIL, but in batches, when the loop waits anyway or at the switch interval
(docs/performance.md has the measurements).
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from typing import Any

import orjson

from llm_service.context import request_id
from llm_service.settings import Settings

ACCESS_LOGGER = "llm_service.access"
access_log = logging.getLogger(ACCESS_LOGGER)

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
    """Adds ``request_id`` to every record (for both formats), unless the record has one
    (the access line's own, or set by the queue before the record left its context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            record.request_id = request_id.get()
        return True


def json_formatter() -> logging.Formatter:
    """python-json-logger on orjson: time, level, logger, message, request_id and extras;
    access lines by a shortcut that writes the same object."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.orjson import OrjsonFormatter

    return AccessJsonFormatter(
        OrjsonFormatter(
            "%(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured copy
        )
    )


class AccessJsonFormatter(logging.Formatter):
    """``general`` for every record but the access line, which it writes itself as the
    same JSON object (level, logger, message, the line's fields, time): one line per
    request is the formatting work that grows with the load, and python-json-logger's
    general path (every record attribute checked against the reserved ones) costs
    several times a direct ``orjson.dumps``."""

    def __init__(self, general: logging.Formatter) -> None:
        super().__init__()
        self.general = general

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if (
            record.name != ACCESS_LOGGER
            or not isinstance(args, tuple)
            or len(args) != 3
            or not isinstance(args[2], AccessSummary)
            or record.exc_info
        ):
            return self.general.format(record)
        line = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **args[2].fields,
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
        }
        return orjson.dumps(line, default=str).decode()


class OneLineFormatter(logging.Formatter):
    """The text format, each record on one line: line breaks in the message, the
    exception's text and the stack are written as ``\\n`` and ``\\r``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" in text or "\r" in text:
            text = text.replace("\r", "\\r").replace("\n", "\\n")
        return text


class AccessSummary:
    """The text of an access line's message, built only when a handler formats it (on the
    log thread): the JSON format carries the same fields as keys."""

    __slots__ = ("fields",)

    _SKIP = frozenset({"method", "route", "request_id"})

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        skip = self._SKIP
        return " ".join(f"{k}={v}" for k, v in self.fields.items() if k not in skip)


MAX_QUEUED = 10_000
"""Records that may wait for the writer (about 10 MB): past it, while the destination does
not keep up (a blocked stderr pipe, a stalled collector), records are dropped and counted,
not kept without bound."""


class QueuedRecords(QueueHandler):
    """The root handler of ``configure_logging``: tags a record with its request id and
    queues it for the ``LogWriter``, nothing more on the caller's thread.

    The access logger's records (immutable arguments, no exception) are queued as they
    are; others have their message and traceback rendered first, as the stdlib's
    ``QueueHandler`` does, since their arguments may change once the call returns. At most
    ``MAX_QUEUED`` wait; the writer reports how many were dropped past that.
    """

    def __init__(self, writer: LogWriter) -> None:
        super().__init__(writer.records)
        self.writer = writer
        self.addFilter(RequestIdFilter())

    def enqueue(self, record: logging.LogRecord) -> None:
        records = self.writer.records
        if records.qsize() >= MAX_QUEUED:
            self.writer.dropped += 1  # (a lost increment under a race only under-counts)
            return
        records.put_nowait(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.name == ACCESS_LOGGER:
            return record
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _EXCEPTIONS.formatException(record.exc_info)
            record.exc_info = None
        return record


_EXCEPTIONS = logging.Formatter()


class LogWriter:
    """Formats queued records with ``handler``'s formatter and writes each batch to its
    stream in one write, on a thread of its own. ``stop`` writes what is left."""

    LINGER = 0.02
    """Seconds to let records gather after a wake-up: at most about 50 wake-ups per second
    however many requests end, and a line is late by no more than that."""

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self.handler = handler
        self.records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self.dropped = 0  # records QueuedRecords dropped since the last report
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write everything queued so far and end the thread."""
        if self.thread.is_alive():
            self.records.put(None)
            self.thread.join(timeout)

    def _run(self) -> None:
        records = self.records
        while True:
            batch = [records.get()]
            if batch[0] is not None:
                time.sleep(self.LINGER)
            while True:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            if not self._write(batch):
                return

    def _write(self, batch: list[logging.LogRecord | None]) -> bool:
        """Write ``batch``; False once the stop marker is in it."""
        handler = self.handler
        lines: list[str] = []
        going = True
        dropped, self.dropped = self.dropped, 0
        if dropped:
            note = logging.makeLogRecord(
                {
                    "name": __name__,
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"{dropped} log lines dropped: the log destination is too slow",
                    "request_id": "-",
                }
            )
            batch = [note, *batch]
        for record in batch:
            if record is None:
                going = False
            elif record.levelno >= handler.level and handler.filter(record):
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:
                    handler.handleError(record)
        if lines:
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(batch[-1] or logging.makeLogRecord({}))
        return going


def handler_for(settings: Settings, stream: Any = None) -> logging.StreamHandler[Any]:
    """A stream handler (stderr by default) in the configured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(OneLineFormatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings, stream: Any = None) -> LogWriter:
    """Root logger: lines in ``LLM_LOG_FORMAT`` at ``LLM_LOG_LEVEL`` (or the reference's
    ``OPEA_LOGGER_LEVEL``, which settings read when it is unset) to ``stream`` (stderr),
    formatted and written by the returned ``LogWriter``'s thread, already started; uvicorn's
    loggers propagate to it, so its lines come out in the same format. Call
    ``stop_logging`` with it before exiting, so the last lines are written."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    writer = LogWriter(handler_for(settings, stream))
    root.addHandler(QueuedRecords(writer))
    root.setLevel(settings.log_level)
    writer.start()
    return writer


def stop_logging(writer: LogWriter) -> None:
    """Write the queued lines, then log straight through the writer's handler (lines
    logged at exit still come out)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, QueuedRecords):
            root.removeHandler(old)
    writer.stop()
    if writer.handler not in root.handlers:
        root.addHandler(writer.handler)
