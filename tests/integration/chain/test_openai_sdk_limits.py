"""The openai SDK's reads are bounded too (LLM_MODEL_CLIENT=chatopenai: ChatOpenAI;
LLM_MODEL_API=completions: VLLMOpenAI): an endless error body, whole reply, stream line or
stream event ends as a defined 502 (or an SSE error event once the answer has started)
within seconds, in bounded memory that is given back; redirects are not followed and
compressed replies are refused.

The model server is ``hostile.HostileServer`` (raw sockets); the service runs in this
process, so this process's RSS is the service's memory.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from llm_service import build_chain
from llm_service.errors import UpstreamError
from llm_service.settings import Settings
from tests.support.hostile_upstream import (
    MIB,
    Answer,
    HostileServer,
    Request,
    Rss,
    Sent,
    endless,
    normal_answer,
    raw,
    response,
)
from tests.support.servers import ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

RESPONSE_CAP = 1 * MIB
LINE_CAP = 64 * 1024
ERROR_BODY_BYTES = 64 * 1024  # bounded.ERROR_BODY_BYTES
# The service's own deadlines are far away: a request that ends within QUICK seconds was
# ended by a limit, not by a timeout.
LIMITS: dict[str, Any] = {
    "startup_wait": 0,
    "first_token_timeout": 20.0,
    "request_timeout": 30.0,
    "max_upstream_response_bytes": RESPONSE_CAP,
    "max_upstream_line_bytes": LINE_CAP,
}
MODES: dict[str, dict[str, Any]] = {
    "chatopenai": {"model_client": "chatopenai"},
    "completions": {"model_api": "completions", "model_server": "vllm"},
}
QUICK = 5.0
# Memory: the cap twice (a reply being joined) plus room for the pools and parsers.
PEAK_ROOM = 2 * RESPONSE_CAP + 50 * MIB
AFTER_ROOM = 16 * MIB

BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
JSON_HEAD = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n\r\n"


def sse_line(mode: str, text: str) -> bytes:
    """One stream chunk saying ``text``, in the shape the mode's endpoint sends."""
    if mode == "chatopenai":
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        body = {"object": "chat.completion.chunk", "model": "fake-model", "choices": [choice]}
    else:
        choice = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
        body = {"object": "text_completion", "model": "fake-model", "choices": [choice]}
    return b"data: " + orjson.dumps({"id": "x", "created": 0, **body}) + b"\n\n"


def completions_answer() -> Answer:
    """vLLM's /v1/completions, a whole answer or a stream, as asked (chat: ``normal_answer``)."""
    chat = normal_answer()

    async def answer(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: Sent
    ) -> None:
        if request.path != "/v1/completions":
            await chat(request, reader, writer, sent)
            return
        if orjson.loads(request.body).get("stream"):
            body = sse_line("completions", "Hi") + b"data: [DONE]\n\n"
            writer.write(response(200, body, "text/event-stream"))
        else:
            choice = {"index": 0, "text": "Hi", "finish_reason": "stop", "logprobs": None}
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            reply = {"id": "x", "object": "text_completion", "created": 0,
                     "model": "fake-model", "choices": [choice], "usage": usage}  # fmt: skip
            writer.write(response(200, orjson.dumps(reply)))
        await writer.drain()

    return answer


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer(default=completions_answer())
    yield server
    server.close()


@pytest.fixture(scope="module", params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def service(hostile: HostileServer, mode: str) -> Iterator[ServiceServer]:
    server = ServiceServer(settings_for(hostile.url, **MODES[mode], **LIMITS))
    # Warm up both paths (first-use imports and pools are not the hostile reply's memory).
    for stream in (True, False):
        resp = post(server, stream)
        assert resp.status_code == 200, resp.text[:300]
        assert "Hi" in resp.text
    yield server
    server.close()


@pytest.fixture
def server(hostile: HostileServer) -> HostileServer:
    hostile.answers.clear()
    hostile.requests.clear()
    return hostile


def post(service: ServiceServer, stream: bool) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=60
    )


def timed(service: ServiceServer, stream: bool) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = post(service, stream)
    return resp, time.monotonic() - start


def error_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 502, resp.text[:300]
    error = resp.json()["error"]
    assert error["code"] == 502
    return error  # type: ignore[no-any-return]


def assert_bounded(rss: Rss) -> None:
    assert rss.growth < PEAK_ROOM, str(rss)
    assert rss.settle() - rss.before < AFTER_ROOM, str(rss)


TOO_LARGE = f"model server reply exceeds {RESPONSE_CAP} bytes (LLM_MAX_UPSTREAM_RESPONSE_BYTES)"
EVENT_TOO_LONG = (
    f"model server sent a stream event longer than {LINE_CAP} bytes (LLM_MAX_UPSTREAM_LINE_BYTES)"
)


# --- error bodies and whole replies ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_endless_error_body_is_502_in_bounded_memory_and_time(
    service: ServiceServer, server: HostileServer, stream: bool
) -> None:
    message = b'{"error": {"message": "out of KV cache ' + b"x" * 200
    server.push(endless(JSON_HEAD % 500 + message, b"y" * 4096))
    with Rss() as rss:
        resp, took = timed(service, stream)
    # The SDK names the status; a body cut short is no JSON, so it shows no message of it.
    assert error_of(resp)["message"].startswith("model server answered 500: Error code: 500")
    assert len(resp.content) < 2000
    assert took < QUICK
    assert server.sent.bytes < 32 * MIB  # the service stopped reading and closed
    assert_bounded(rss)


def test_an_error_body_is_read_up_to_its_cap_only(
    service: ServiceServer, server: HostileServer
) -> None:
    """A body past ERROR_BODY_BYTES that does end: still cut, and the connection dropped."""
    body = b'{"error": {"message": "' + b"e" * (4 * ERROR_BODY_BYTES) + b'"}}'
    server.push(raw(response(503, body), hold=True))
    resp, took = timed(service, False)
    assert resp.status_code == 503
    assert resp.json()["error"]["message"].startswith("model server answered 503: ")
    assert took < QUICK  # held open: only a cut read (and a closed connection) ends it


def test_an_endless_whole_reply_is_502_in_bounded_memory_and_time(
    service: ServiceServer, server: HostileServer
) -> None:
    server.push(endless(JSON_HEAD % 200 + b'{"choices": [{"text": "'))
    with Rss() as rss:
        resp, took = timed(service, False)
    assert error_of(resp)["message"] == TOO_LARGE
    assert took < QUICK
    assert server.sent.bytes < 32 * MIB
    assert_bounded(rss)


def test_a_declared_length_past_the_cap_is_refused_unread(
    service: ServiceServer, server: HostileServer
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    server.push(raw(head % (RESPONSE_CAP + 1) + b"{", hold=True))
    resp, took = timed(service, False)
    assert error_of(resp)["message"] == TOO_LARGE
    assert took < QUICK


# --- lines and events of a stream --------------------------------------------------------------


def test_an_endless_line_before_the_first_token_is_502(
    service: ServiceServer, server: HostileServer
) -> None:
    server.push(endless(SSE_HEAD + b"data: {", b"z" * 4096))
    with Rss() as rss:
        resp, took = timed(service, True)
    assert error_of(resp)["message"] == EVENT_TOO_LONG
    assert took < QUICK
    assert server.sent.bytes < 16 * MIB  # cut, less what loopback's buffers held
    assert_bounded(rss)


def test_an_endless_event_of_short_lines_is_502(
    service: ServiceServer, server: HostileServer
) -> None:
    """The SDK keeps an event's lines until the blank line that ends it: short lines
    without that end grow it as surely as one long line."""
    server.push(endless(SSE_HEAD + b"data: {\n", b'data: "zzzzzzzzzzzzzzzz"\n' * 256))
    with Rss() as rss:
        resp, took = timed(service, True)
    assert error_of(resp)["message"] == EVENT_TOO_LONG
    assert took < QUICK
    assert server.sent.bytes < 16 * MIB
    assert_bounded(rss)


def test_an_endless_line_after_the_first_token_is_an_error_event_then_done(
    service: ServiceServer, server: HostileServer, mode: str
) -> None:
    server.push(endless(SSE_HEAD + sse_line(mode, "Hi") + b"data: {", b"z" * 4096))
    with Rss() as rss:
        resp, took = timed(service, True)
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert content_of(frames) == "Hi"
    assert frames[-1].raw == "[DONE]" and frames[-2].event == "error"
    error = frames[-2].json()["error"]
    assert error == {**error, "code": 502, "message": EVENT_TOO_LONG}
    assert took < QUICK
    assert_bounded(rss)


def test_a_long_stream_of_small_events_passes(
    service: ServiceServer, server: HostileServer, mode: str
) -> None:
    """The cap is per event: a stream many times longer than it, in events below it,
    split across reads anywhere (CRLF line ends too), is relayed whole."""
    event = sse_line(mode, "ab").replace(b"\n", b"\r\n")
    body = SSE_HEAD + event * (4 * LINE_CAP // len(event)) + b"data: [DONE]\r\n\r\n"
    server.push(raw(body))
    resp = post(service, True)
    assert resp.status_code == 200
    frames = parse_frames(resp.text)
    assert frames[-1].raw == "[DONE]" and all(f.event != "error" for f in frames)
    assert content_of(frames) == "ab" * (4 * LINE_CAP // len(event))


# --- redirects and compression -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_redirect_is_502_and_not_followed(
    service: ServiceServer, server: HostileServer, stream: bool
) -> None:
    elsewhere = HostileServer(default=completions_answer())
    try:
        head = b"HTTP/1.1 307 X\r\nLocation: %s/v1/chat/completions\r\nContent-Length: 0\r\n\r\n"
        server.push(raw(head % elsewhere.url.encode()))
        resp = post(service, stream)
        assert error_of(resp)["message"].startswith("model server answered 307")
        assert elsewhere.requests == []  # the prompt went nowhere else
    finally:
        elsewhere.close()


def test_a_compressed_reply_is_refused_unread(
    service: ServiceServer, server: HostileServer
) -> None:
    """A small gzip body could expand past any cap: replies are asked uncompressed, and one
    compressed all the same is refused."""
    bomb = gzip.compress(b" " * (64 * MIB))
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(bomb)
    )
    server.push(raw(head + bomb))
    with Rss() as rss:
        resp, took = timed(service, False)
    assert error_of(resp)["message"] == (
        "model server sent a compressed reply (Content-Encoding) though asked for none"
    )
    assert server.requests[-1].headers["accept-encoding"] == "identity"
    assert took < QUICK
    assert_bounded(rss)


# --- the sync clients (a notebook's chain.invoke / chain.stream) --------------------------------


def sync_settings(hostile: HostileServer, mode: str) -> Settings:
    return settings_for(hostile.url, **MODES[mode], **LIMITS)


def test_the_sync_clients_are_capped_too(server: HostileServer, mode: str) -> None:
    chain = build_chain(sync_settings(server, mode))
    messages = {"messages": BODY["messages"]}
    assert "Hi" in str(chain.invoke(messages).content)  # warm-up: imports, pools

    server.push(endless(JSON_HEAD % 200 + b'{"choices": [{"text": "'))
    with Rss() as rss, pytest.raises(UpstreamError) as whole:
        chain.invoke(messages)
    assert str(whole.value) == TOO_LARGE
    assert_bounded(rss)

    server.push(endless(SSE_HEAD + sse_line(mode, "Hi") + b"data: {", b"z" * 4096))
    got: list[str] = []
    with Rss() as rss, pytest.raises(UpstreamError) as line:
        for piece in chain.stream(messages):
            got.append(str(piece.content))
    assert str(line.value) == EVENT_TOO_LONG
    # CompletionsChatModel streams on the async path only: its sync stream is one call.
    assert "".join(got) == ("Hi" if mode == "chatopenai" else "")
    assert_bounded(rss)

    server.push(endless(JSON_HEAD % 500 + b'{"error": {"message": "busy', b"y" * 4096))
    start = time.monotonic()
    with pytest.raises(Exception, match="Error code: 500") as error:
        chain.invoke(messages)
    assert getattr(error.value, "status_code", None) == 500
    assert time.monotonic() - start < QUICK
