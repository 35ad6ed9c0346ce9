"""The SSE body of a streamed chat completion, parsed as it arrives."""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.errors import UpstreamError
from llm_service.upstream.faults import message_of

Chunk = dict[str, Any]
"""One parsed ``chat.completion.chunk`` object."""

_DONE = b"[DONE]"


class ChunkParser:
    """Feeds of SSE bytes to chunk dicts.

    ``feed`` returns the complete chunks of what it was given (a line split across reads
    waits for its end). ``data: [DONE]`` sets ``finished``; a malformed chunk or an error
    object sets ``failure``, and nothing after it is parsed. ``tail`` is the last batch."""

    __slots__ = ("buffer", "failure", "finished", "tail")

    def __init__(self) -> None:
        self.buffer = b""
        self.finished = False
        self.failure: UpstreamError | None = None
        self.tail: list[Chunk] = []

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
            if "error" in chunk or chunk.get("object") == "error":
                message = message_of(chunk, body)
                self.failure = UpstreamError(f"model server failed mid-stream: {message}")
                break
            batch.append(chunk)
        if batch:
            self.tail = batch
        return batch
