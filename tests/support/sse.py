"""Reading the service's SSE output in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Frame:
    event: str | None
    field: str  # "data" or "json" (the seed's trailer line)
    raw: str

    def json(self) -> Any:
        return json.loads(self.raw)


def parse_frames(text: str) -> list[Frame]:
    """Frames separated by blank lines; each has optional ``event:`` and one data line."""
    frames: list[Frame] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                frames.append(Frame(event, "data", line[5:].strip()))
            elif line.startswith("json:"):
                frames.append(Frame(event, "json", line[5:].strip()))
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
    return frames


def content_of(frames: list[Frame]) -> str:
    return "".join(
        f.json()["choices"][0]["delta"].get("content") or ""
        for f in frames
        if f.field == "data" and f.event is None and f.raw != "[DONE]" and f.json()["choices"]
    )
