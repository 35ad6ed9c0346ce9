"""The relay's two ways for a chunk: content alone for choice 0 goes to
``OpenAIChunkEncoder.content`` (the per-token hot path), anything else is written whole by
``OpenAIChunkEncoder.choices``. Checked on the encoder's calls, with the servers' shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from llm_service.protocol.openai import OpenAIChunkEncoder
from llm_service.serving.relay import Answer, UpstreamRelay


class CountingEncoder(OpenAIChunkEncoder):
    def __init__(self) -> None:
        super().__init__("m")
        self.calls: list[str] = []

    def content(self, text: str) -> bytes:
        self.calls.append("content")
        return super().content(text)

    def choices(self, choices: Sequence[Mapping[str, Any]]) -> bytes:
        self.calls.append("choices")
        return super().choices(choices)


def relay(rich: bool = False) -> tuple[UpstreamRelay, CountingEncoder]:
    encoder = CountingEncoder()

    async def never() -> Any:
        raise AssertionError("not opened here")

    return UpstreamRelay(never, encoder, Answer(), lambda _: None, rich=rich), encoder


def chunk(*choices: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": "up", "object": "chat.completion.chunk", "model": "x", "choices": list(choices),
            **more}  # fmt: skip


def choice(delta: dict[str, Any], index: int = 0, **more: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": None, **more}


PLAIN = [
    chunk(choice({"content": "Hi"})),  # vLLM, OpenAI, llama.cpp
    chunk(choice({"role": "assistant", "content": "Hi"}, logprobs=None), usage=None),  # TGI
]


@pytest.mark.parametrize("rich", [False, True])
@pytest.mark.parametrize("plain", PLAIN)
def test_content_alone_takes_the_hot_path(plain: dict[str, Any], rich: bool) -> None:
    r, encoder = relay(rich)
    frame = r.encode([plain])
    assert encoder.calls == ["content"]
    assert frame == encoder.content("Hi")
    assert r.answer.text == "Hi"


CALL = {"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}
OTHER = [
    chunk(choice({"reasoning_content": "hmm"})),
    chunk(choice({"reasoning": "hmm", "content": "Hi"})),
    chunk(choice({"tool_calls": [CALL]})),
    chunk(choice({"content": "Hi"}, logprobs={"content": [{"token": "Hi", "logprob": -1.0}]})),
]


@pytest.mark.parametrize("other", OTHER)
def test_anything_else_is_relayed_whole(other: dict[str, Any]) -> None:
    # Logprobs come only when the request asks for them, which makes the relay "rich".
    r, encoder = relay(rich="logprobs" in other["choices"][0])
    frame = r.encode([other])
    assert encoder.calls[-1] == "choices"
    body = orjson.loads(frame.removeprefix(b"data: "))
    assert body["id"] == encoder.id and body["model"] == "m"
    assert body["choices"] == [{**other["choices"][0], "finish_reason": None}]


def test_second_choice_and_role_only_chunks() -> None:
    r, encoder = relay(rich=True)
    assert r.encode([chunk(choice({"role": "assistant", "content": ""}, index=1))]) == b""
    r.encode([chunk(choice({"content": "B"}, index=1))])
    r.encode([chunk(choice({"content": ""}, index=1, finish_reason="length"))])
    assert encoder.calls == ["choices"]
    assert r.answer.others == {1: "length"} and r.answer.text == ""
