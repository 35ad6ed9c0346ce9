"""The support matrix: one service per kind of model server (LLM_MODEL_SERVER), each in
front of the fake server playing that server's documented quirks, and the llamacpp row
against the real embedded llama.cpp server. Each row checks what the server is sent
(sampling knobs it understands; a 422 naming the ones it does not), that its error shapes
become our errors with its message, and that its usage and finish reasons come through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

KNOBS = {"top_k": 10, "repetition_penalty": 1.05, "typical_p": 0.9}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# LLM_MODEL_SERVER -> the knobs it is sent (under their wire names)
SENT = {
    "vllm": {"top_k": 10, "repetition_penalty": 1.05},
    "ray": {"top_k": 10, "repetition_penalty": 1.05},
    "tgi": {},
    "openai": {},
}

# Each server's error body for a refused request (from its documentation)
ERROR_BODIES: dict[str, tuple[int, Any, str]] = {
    # vLLM: ErrorResponse {object: "error", message, type, param, code}
    "vllm": (400, {"object": "error", "message": "max_tokens is too large", "type":
                   "BadRequestError", "param": None, "code": 400}, "max_tokens is too large"),
    # Ray Serve LLM: OpenAI's {"error": {...}} envelope
    "ray": (400, {"error": {"message": "model not found", "type": "NotFoundError",
                            "code": 400}}, "model not found"),
    # TGI: {"error": "...", "error_type": "..."}
    # (an over-long prompt is the client's to fix: 400, test_context_overflow.py)
    "tgi": (422, {"error": "Input validation error: `temperature` must be strictly positive",
                  "error_type": "validation"}, "Input validation error"),
    "openai": (400, {"error": {"message": "Invalid value for temperature", "type":
                               "invalid_request_error", "param": "temperature", "code": None}},
               "Invalid value for temperature"),
}  # fmt: skip

# Each server's streamed answer shape
STREAM_SCRIPTS = {
    "vllm": Script(role_chunk=True),  # role-only first chunk, separate usage chunk
    "ray": Script(role_chunk=True),
    "tgi": Script(role_chunk=False, usage_in_finish_chunk=True, finish_reason="eos_token"),
    "openai": Script(role_chunk=True),
}
MID_STREAM_ERRORS = {
    "vllm": None,  # the fake's default: vLLM's {"error": {...}} chunk
    "ray": None,
    "tgi": {"error": "Request failed during generation: CUDA out of memory",
            "error_type": "generation"},
    "openai": {"error": {"message": "The server had an error", "type": "server_error"}},
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(SENT))
def row(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeOpenAI, ServiceServer]]:
    kind: str = request.param
    fake_server = FakeServer()
    service = ServiceServer(settings_for(fake_server.url, model_server=kind, startup_wait=0))
    yield kind, fake_server.fake, service
    service.close()
    fake_server.close()


def post(service: ServiceServer, **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "What is deep learning?"}], **extra}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def test_sampling_knobs_reach_only_servers_that_take_them(
    row: tuple[str, FakeOpenAI, ServiceServer],
) -> None:
    kind, fake, service = row
    fake.reset()
    taken = {k: v for k, v in KNOBS.items() if k in SENT[kind]}
    assert post(service, stream=True, temperature=0.2, top_p=0.9, **taken).status_code == 200
    assert post(service, stream=False, **taken).status_code == 200
    for sent in fake.requests:
        assert {k: sent[k] for k in ("top_k", "repetition_penalty", "typical_p", "repeat_penalty")
                if k in sent} == SENT[kind]  # fmt: skip
    assert fake.requests[0]["temperature"] == 0.2 and fake.requests[0]["top_p"] == 0.9
    # All of them, as OPEA pipelines send them: the ones it lacks are left out, as the seed
    # left them all out.
    fake.reset()
    for stream in (True, False):
        assert post(service, stream=stream, **KNOBS).status_code == 200
    for sent in fake.requests:
        assert {k: sent[k] for k in ("top_k", "repetition_penalty", "typical_p", "repeat_penalty")
                if k in sent} == SENT[kind]  # fmt: skip


def test_stream_usage_and_finish_reason(row: tuple[str, FakeOpenAI, ServiceServer]) -> None:
    kind, fake, service = row
    fake.reset()
    fake.push(STREAM_SCRIPTS[kind])
    resp = post(service, stream=True, stream_options={"include_usage": True})
    frames = parse_frames(resp.text)
    assert content_of(frames) == "Deep learning is great."
    assert frames[-3].json()["choices"][0]["finish_reason"] == "stop"  # eos_token -> stop
    usage = frames[-2].json()["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] == 4


def test_whole_answer_usage_and_length(row: tuple[str, FakeOpenAI, ServiceServer]) -> None:
    _kind, fake, service = row
    fake.reset()
    doc = post(service, stream=False, max_tokens=2).json()
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_error_shape_becomes_502_with_its_message(
    row: tuple[str, FakeOpenAI, ServiceServer],
) -> None:
    kind, fake, service = row
    status, body, message = ERROR_BODIES[kind]
    fake.reset()
    for stream in (True, False):
        fake.push(Script(status=status, error_body=body))
        resp = post(service, stream=stream)
        assert resp.status_code == 502
        err = resp.json()["error"]
        assert err["type"] == "upstream_error"
        assert err["message"].startswith(f"model server answered {status}: ")
        assert message in err["message"]


def test_mid_stream_error_chunk_is_an_sse_error(
    row: tuple[str, FakeOpenAI, ServiceServer],
) -> None:
    kind, fake, service = row
    fake.reset()
    fake.push(Script(error_chunk_after=2, error_chunk=MID_STREAM_ERRORS[kind]))
    frames = parse_frames(post(service, stream=True).text)
    assert content_of(frames) == "Deep learning"
    errors = [f.json()["error"] for f in frames if f.event == "error"]
    assert len(errors) == 1 and errors[0]["code"] == 502
    expected = MID_STREAM_ERRORS[kind]
    if isinstance(expected, dict) and isinstance(expected.get("error"), str):
        assert expected["error"] in errors[0]["message"]
    assert frames[-1].raw == "[DONE]"


# --- vLLM's completions endpoint through VLLMOpenAI (LLM_MODEL_API=completions) ------------


@pytest.fixture(scope="module")
def completions_row() -> Iterator[tuple[FakeOpenAI, ServiceServer]]:
    fake_server = FakeServer()
    settings = settings_for(
        fake_server.url, model_server="vllm", model_api="completions", startup_wait=0
    )
    service = ServiceServer(settings)
    yield fake_server.fake, service
    service.close()
    fake_server.close()


def test_vllm_completions_api_streams_and_answers_whole(
    completions_row: tuple[FakeOpenAI, ServiceServer],
) -> None:
    fake, service = completions_row
    fake.reset()
    fake.push(Script(finish_reason="length"))
    resp = post(service, stream=True, max_tokens=5, top_k=10, repetition_penalty=1.05)
    frames = parse_frames(resp.text)
    assert content_of(frames) == "Deep learning is great."
    assert frames[-2].json()["choices"][0]["finish_reason"] == "length"
    sent = fake.requests[-1]
    assert "messages" not in sent and "What is deep learning?" in str(sent["prompt"])
    assert sent["max_tokens"] == 5 and sent["stream"] is True
    assert sent["top_k"] == 10 and sent["repetition_penalty"] == 1.05  # via extra_body
    doc = post(service, stream=False).json()
    assert doc["text"] == "Deep learning is great."
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["completion_tokens"] == 5
    assert not fake.requests[-1].get("stream")


def test_vllm_completions_api_refuses_what_it_cannot_send(
    completions_row: tuple[FakeOpenAI, ServiceServer],
) -> None:
    fake, service = completions_row
    fake.reset()
    for extra in ({"logit_bias": {"1": 1}}, {"frequency_penalty": 0.5}, {"tools": [TOOL]}):
        resp = post(service, stream=True, **extra)
        assert resp.status_code == 422, extra
        assert resp.json()["error"]["param"] == next(iter(extra))
    assert fake.requests == []


def test_vllm_completions_api_error_is_502(
    completions_row: tuple[FakeOpenAI, ServiceServer],
) -> None:
    fake, service = completions_row
    fake.reset()
    fake.push(Script(status=400, error_body=ERROR_BODIES["vllm"][1]))
    resp = post(service, stream=True)
    assert resp.status_code == 502
    assert "max_tokens is too large" in resp.json()["error"]["message"]


# --- llamacpp: the real embedded llama.cpp server ------------------------------------------


@pytest.mark.embedded
def test_llamacpp_row_on_the_real_server(llama_service: ServiceServer) -> None:
    resp = post(llama_service, stream=True, max_tokens=4, stream_options={"include_usage": True},
                temperature=0.5, **KNOBS)  # fmt: skip
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]"
    finish = [f.json()["choices"][0]["finish_reason"] for f in frames[:-1] if f.json()["choices"]]
    assert finish[-1] in ("stop", "length") and content_of(frames)
    doc = post(llama_service, stream=False, max_tokens=4, **KNOBS).json()
    assert doc["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < doc["usage"]["completion_tokens"] <= 4
    assert doc["usage"]["prompt_tokens"] > 0
