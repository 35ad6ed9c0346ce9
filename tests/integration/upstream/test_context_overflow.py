"""A prompt longer than the model's context window is the client's to fix: 400, as the
reference answers, with the model server's own words, never a 502.

Against the real llama.cpp server (its window is 2048 tokens in the tests) and against the
fake server sending vLLM's, TGI's and llama.cpp's exact error bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, ServiceServer, settings_for

SECRET = "sk-overflow-test-key-0123456789"

VLLM_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, you requested 4612 tokens "
    "(4580 in the messages, 32 in the completion). Please reduce the length of the messages "
    "or completion."
)
TGI_MESSAGE = (
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
    "Given: 4580 `inputs` tokens and 32 `max_new_tokens`"
)
LLAMA_SERVER_MESSAGE = "the request exceeds the available context size, try increasing it"

# (status, body) exactly as each server sends them.
BODIES: dict[str, tuple[int, Any, str]] = {
    "vllm": (400, {"object": "error", "message": VLLM_MESSAGE, "type": "BadRequestError",
                   "param": None, "code": 400}, VLLM_MESSAGE),
    "vllm-error-object": (400, {"error": {"message": VLLM_MESSAGE, "type": "BadRequestError",
                                          "param": None, "code": 400}}, VLLM_MESSAGE),
    "vllm-decoder-prompt": (400, {"object": "error", "message": "The decoder prompt (length "
                                  "5000) is longer than the maximum model length of 4096. Make "
                                  "sure that `max_model_len` is no smaller than the number of "
                                  "text tokens.", "type": "BadRequestError", "param": None,
                                  "code": 400}, "longer than the maximum model length of 4096"),
    "tgi": (422, {"error": TGI_MESSAGE, "error_type": "validation"}, TGI_MESSAGE),
    "tgi-inputs": (422, {"error": "Input validation error: `inputs` must have less than 4096 "
                                  "tokens. Given: 4580", "error_type": "validation"},
                   "`inputs` must have less than 4096 tokens"),
    "llama-server": (400, {"error": {"code": 400, "message": LLAMA_SERVER_MESSAGE,
                                     "type": "exceed_context_size_error",
                                     "n_prompt_tokens": 4580, "n_ctx": 4096}},
                     LLAMA_SERVER_MESSAGE),
}  # fmt: skip

LONG_PROMPT = [{"role": "user", "content": "Tell me about deep learning. " * 800}]


def post(url: str, stream: bool, messages: Any = None) -> httpx.Response:
    body = {"messages": messages or [{"role": "user", "content": "Hi"}], "max_tokens": 32,
            "stream": stream}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def assert_too_long(resp: httpx.Response, says: str) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert error["code"] == 400
    assert error["message"].startswith("messages: the prompt does not fit")
    assert says in error["message"]


@pytest.fixture(scope="module")
def keyed_service(fake_server: FakeServer) -> Iterator[ServiceServer]:
    """The service with a model-server key, which the server might echo in its message."""
    server = ServiceServer(settings_for(fake_server.url, vllm_api_key=SECRET))
    yield server
    server.close()


@pytest.mark.parametrize("server", sorted(BODIES))
@pytest.mark.parametrize("stream", [False, True])
def test_model_server_overflow_is_400(
    keyed_service: ServiceServer, fake: FakeOpenAI, server: str, stream: bool
) -> None:
    status, body, says = BODIES[server]
    fake.push(Script(status=status, error_body=body))
    assert_too_long(post(keyed_service.url, stream), says)
    assert len(fake.requests) == 1  # not retried: another try cannot fit it either


@pytest.mark.parametrize("stream", [False, True])
def test_overflow_message_is_scrubbed(
    keyed_service: ServiceServer, fake: FakeOpenAI, stream: bool
) -> None:
    echoed = f"{VLLM_MESSAGE} (request with Authorization: Bearer {SECRET})"
    fake.push(Script(status=400, error_body={"object": "error", "message": echoed,
                                             "type": "BadRequestError", "code": 400}))  # fmt: skip
    resp = post(keyed_service.url, stream)
    assert_too_long(resp, VLLM_MESSAGE)
    assert SECRET not in resp.text


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "Invalid value for top_k: must be -1 or at least 1"),
        (422, "Input validation error: `temperature` must be strictly positive"),
        (500, VLLM_MESSAGE),  # a server error that mentions the window is still its fault
    ],
)
def test_other_refusals_stay_model_server_errors(
    keyed_service: ServiceServer, fake: FakeOpenAI, status: int, message: str
) -> None:
    body = {"object": "error", "message": message, "type": "BadRequestError", "code": status}
    fake.push(Script(status=status, error_body=body))
    resp = post(keyed_service.url, False)
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "upstream_error"


@pytest.mark.embedded
def test_llama_cpp_overflow_is_400(llama_service: ServiceServer) -> None:
    """The real server: a messages-form prompt of about 4,800 tokens in a 2048-token window."""
    assert_too_long(post(llama_service.url, False, LONG_PROMPT), "maximum context length is 2048")
    assert post(llama_service.url, False).status_code == 200  # short enough: answered


@pytest.mark.embedded
def test_llama_cpp_python_stream_overflow_has_no_reason(llama_service: ServiceServer) -> None:
    """llama-cpp-python's server (the embedded one) answers a stream 200 before it looks at
    the prompt, then ends it without a word: nothing says why, so it stays a 502 (the
    C++ llama-server refuses with a 400 first, as the fake's body above)."""
    resp = post(llama_service.url, True, LONG_PROMPT)
    assert resp.status_code == 502
    assert "closed the stream before the answer ended" in resp.json()["error"]["message"]
    assert post(llama_service.url, True).status_code == 200
