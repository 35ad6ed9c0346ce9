"""The SSE body of a streamed chat completion, parsed as it arrives."""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.errors import UpstreamError
from llm_service.upstream.faults import Redact, message_of

Chunk = dict[str, Any]
"""One parsed ``chat.completion.chunk`` object."""

_DONE = b"[DONE]"
MAX_LINE_BYTES = 1024 * 1024  # the default of LLM_MAX_UPSTREAM_LINE_BYTES


class ChunkParser:
    """Feeds of SSE bytes to chunk dicts.

    ``feed`` returns the complete chunks of what it was given (a line split across reads
    waits for its end). ``data: [DONE]`` sets ``finished``; a malformed chunk or an error
    object sets ``failure``, and nothing after it is parsed. ``tail`` is the last batch.

    A line still without its end past ``max_line`` bytes sets ``failure`` too: the buffer
    would otherwise grow (and be copied on every read) for as long as the server sends.
    Error messages from the server go through ``redact``."""

    __slots__ = ("buffer", "failure", "finished", "max_line", "redact", "tail")

    def __init__(self, max_line: int = MAX_LINE_BYTES, redact: Redact | None = None) -> None:
        self.buffer = b""
        self.finished = False
        self.failure: UpstreamError | None = None
        self.tail: list[Chunk] = []
        self.max_line = max_line
        self.redact = redact

    @property
    def ended(self) -> bool:
        return self.finished or self.failure is not None

    @property
    def has_finish_reason(self) -> bool:
        """The last batch said why the answer ended (some servers then send no ``[DONE]``)."""
        return any(c.get("choices") and c["choices"][0].get("finish_reason") for c in self.tail)

    def feed(self, data: bytes) -> list[Chunk]:
        buffer = self.buffer + data if self.buffer else data
        if b"\n" not in data:
            self.buffer = buffer
            if len(buffer) > self.max_line:
                self._too_long()
            return []
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()
        batch: list[Chunk] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event/id fields
            body = line[5:].strip()
            if body == _DONE:
                self.finished = True
                break
            try:
                chunk = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.failure = UpstreamError("model server sent a malformed stream chunk")
                break
            if type(chunk) is not dict or "error" in chunk or chunk.get("object") == "error":
                self.failure = self._failed(chunk, body)
                break
            batch.append(chunk)
        if len(self.buffer) > self.max_line and self.failure is None and not self.finished:
            self._too_long()
        if batch:
            self.tail = batch
        return batch

    def _failed(self, chunk: Any, body: bytes) -> UpstreamError:
        if type(chunk) is not dict:  # valid JSON, but not an object: `data: 5`, `data: []`
            return UpstreamError("model server sent a malformed stream chunk")
        message = message_of(chunk, body, self.redact)
        return UpstreamError(f"model server failed mid-stream: {message}")

    def _too_long(self) -> None:
        self.buffer = b""  # nothing keeps the long line
        self.failure = UpstreamError(
            f"model server sent a line longer than {self.max_line} bytes "
            "(LLM_MAX_UPSTREAM_LINE_BYTES)"
        )
