"""The queued log handler stays bounded when the destination stops taking lines."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from llm_service.observability import logs
from tests.support.servers import settings_for


class BlockedStream(io.StringIO):
    """A destination that takes nothing until ``opened`` is set (a full stderr pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()

    def write(self, text: str) -> int:
        self.opened.wait(10)
        return super().write(text)


def test_a_blocked_destination_drops_and_counts_lines_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "MAX_QUEUED", 50)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = BlockedStream()
    writer = logs.configure_logging(settings_for(None, log_format="text"), stream)
    log = logging.getLogger("tests.flood")
    try:
        log.warning("first")  # taken by the writer, which then blocks writing it
        for i in range(500):
            log.warning("line %d", i)
        assert writer.records.qsize() <= 50
        assert writer.dropped >= 400
        stream.opened.set()
    finally:
        logs.stop_logging(writer)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "log lines dropped: the log destination is too slow" in text
    written = [line for line in text.splitlines() if "tests.flood" in line]
    assert 50 <= len(written) <= 60  # the first, and what fitted in the queue


def test_the_access_line_shortcut_writes_what_python_json_logger_writes() -> None:
    formatter = logs.json_formatter()
    assert isinstance(formatter, logs.AccessJsonFormatter)
    fields = {
        "request_id": "r-1", "method": "POST", "route": "/v1/chat/completions",
        "status": 200, "duration_ms": 3.5, "stream": False, "finish_reason": None,
    }  # fmt: skip
    record = logging.getLogger(logs.ACCESS_LOGGER).makeRecord(
        logs.ACCESS_LOGGER, logging.INFO, __file__, 0, "%s %s %s",
        ("POST", "/v1/chat/completions", logs.AccessSummary(fields)), None, extra=fields,
    )  # fmt: skip
    short = json.loads(formatter.format(record))
    general = json.loads(formatter.general.format(record))
    assert list(short) == list(general)  # the same keys, in the same order
    assert short == general
