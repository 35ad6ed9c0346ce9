"""The queued log handler stays bounded when the destination stops taking lines."""

from __future__ import annotations

import io
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
