"""A scriptable fake OpenAI-compatible model server on real sockets.

It does on cue what a real server cannot be made to do: refuse, fail with a status, stall
before the first token, die mid-stream, send vLLM's role-only first chunk and usage chunk,
send malformed chunks or no ``[DONE]``, and answer as vLLM does with reasoning, tool calls
(arguments split over chunks, several calls in one answer) and logprobs. Each request takes
the next queued ``Script`` (or the default one); every request body and header set is
recorded.

Run standalone for benchmarks::

    python tests/support/fake_openai.py --port 8008 --tokens 64 --delay-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class ToolCall:
    """One tool call the fake answers with; ``arguments`` is the JSON text in the pieces
    it is streamed in."""

    name: str
    arguments: list[str]
    id: str = ""

    def whole(self, index: int) -> dict[str, Any]:
        """vLLM's ``message.tool_calls`` entry."""
        return {"id": self.id or f"chatcmpl-tool-{index}", "type": "function",
                "function": {"name": self.name, "arguments": "".join(self.arguments)}}  # fmt: skip

    def deltas(self, index: int) -> list[dict[str, Any]]:
        """vLLM's streamed deltas: id, type and name first, then the argument pieces."""
        first = {"id": self.id or f"chatcmpl-tool-{index}", "type": "function",
                 "index": index, "function": {"name": self.name}}  # fmt: skip
        pieces = [{"index": index, "function": {"arguments": a}} for a in self.arguments]
        return [{"tool_calls": [call]} for call in (first, *pieces)]


@dataclass
class Script:
    """How the fake answers one request."""

    tokens: list[str] = field(default_factory=lambda: ["Deep", " learning", " is", " great", "."])
    finish_reason: str = "stop"
    status: int = 200
    error_body: Any = None  # JSON-able, or bytes sent as is
    headers: dict[str, str] = field(default_factory=dict)
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    die_after: int | None = None  # drop the connection after this many content chunks
    role_chunk: bool = True  # vLLM sends a role-only first chunk
    send_done: bool = True
    malformed_after: int | None = None  # send a broken JSON chunk after this many chunks
    error_chunk_after: int | None = None  # vLLM-style {"error": ...} chunk mid-stream
    tokens_per_write: int = 1  # >1: several chunks in one write (as servers coalesce)
    # --- connectivity quirks ---
    stall_after: int | None = None  # pause after this many content chunks ...
    stall_for: float = 0.0  # ... for this many seconds (an idle gap mid-stream)
    usage_in_finish_chunk: bool = False  # TGI: usage rides on the finish chunk
    error_chunk: Any = None  # the body of the error_chunk_after chunk (default: vLLM's)
    # --- fault injection ---
    hang_after: int | None = None  # after this many content chunks: silence until the client closes
    empty_200: bool = False  # answer 200 with an empty body
    # --- what reasoning models and tool calls add (vLLM's shapes) ---
    reasoning: list[str] | None = None  # streamed before the content, whole in the message
    reasoning_field: str = "reasoning_content"  # newer vLLM: "reasoning"
    tool_calls: list[ToolCall] | None = None  # after the content; finish_reason tool_calls
    # --- answers beyond plain text, in the server's exact shapes ---
    chunks: list[dict[str, Any]] | None = None  # streamed: these chunk bodies (sans head)
    choices: list[dict[str, Any]] | None = None  # whole: these choices as they are
    reply_extra: dict[str, Any] = field(default_factory=dict)  # whole: more top-level keys


class FakeOpenAI:
    """The fake server's state; ``app()`` serves it with aiohttp."""

    def __init__(self, model: str = "fake-model", default: Script | None = None) -> None:
        self.model = model
        self.default = default or Script()
        self.scripts: deque[Script] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[tuple[Any, ...] | None] = []  # client address of each request
        self.streams_started = 0
        self.streams_finished = 0
        self.streams_cut = 0  # the client went away before the end
        self.open_streams = 0
        self.max_model_len: int | None = 4096  # reported in /v1/models, as vLLM does
        self.tokenize_calls = 0
        # A bearer-token check (401 when it fails), e.g. a token server's validator
        self.accept_token: Callable[[str], bool] | None = None
        # When each stream ended (finished or cut), by its last message's content.
        self.ended_at: dict[str, float] = {}
        # vLLM's load gauges served on GET /metrics (404 while None, as before).
        self.load_metrics: tuple[int, int] | None = None  # (running, waiting)

    def push(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()
        self.headers.clear()
        self.peers.clear()
        self.streams_started = self.streams_finished = self.streams_cut = 0
        self.max_model_len = 4096
        self.tokenize_calls = 0
        self.accept_token = None
        self.ended_at.clear()
        self.load_metrics = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        """vLLM's request gauges in Prometheus text (only once ``load_metrics`` is set)."""
        if self.load_metrics is None:
            raise web.HTTPNotFound()
        running, waiting = self.load_metrics
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{self.model}"}} {running}.0\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="{self.model}"}} {waiting}.0\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        model: dict[str, Any] = {"id": self.model, "object": "model"}
        if self.max_model_len is not None:
            model["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [model]})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize, with one token per whitespace-separated word."""
        body = await request.json(loads=orjson.loads)
        self.tokenize_calls += 1
        count = len(str(body.get("prompt", "")).split())
        return web.json_response({"count": count, "max_model_len": self.max_model_len,
                                  "tokens": list(range(count))})  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(tuple(peer) if peer else None)
        if self.accept_token is not None:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not self.accept_token(token):
                return web.json_response(
                    {"object": "error", "message": "invalid or expired token",
                     "type": "AuthenticationError", "code": 401}, status=401,
                )  # fmt: skip
        script = self.scripts.popleft() if self.scripts else self.default
        if script.status != 200:
            raw = script.error_body
            if raw is None:
                raw = {"object": "error", "message": f"fake error {script.status}",
                       "type": "BadRequestError", "code": script.status}  # fmt: skip
            data = raw if isinstance(raw, bytes) else orjson.dumps(raw)
            return web.Response(
                body=data, status=script.status, headers=script.headers,
                content_type="application/json",
            )  # fmt: skip
        if script.empty_200:
            return web.Response(body=b"", status=200, content_type="application/json")
        tokens = script.tokens
        finish = script.finish_reason
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens < len(tokens):
            tokens, finish = tokens[:max_tokens], "length"
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if script.first_token_delay:
            await asyncio.sleep(script.first_token_delay)
        if script.tool_calls:
            finish = "tool_calls"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
            if script.reasoning:
                message[script.reasoning_field] = "".join(script.reasoning)
            if script.tool_calls:
                message["content"] = message["content"] or None
                message["tool_calls"] = [c.whole(i) for i, c in enumerate(script.tool_calls)]
            choice = {"index": 0, "finish_reason": finish, "message": message}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [logprob(t, body) for t in tokens]}
            choices = script.choices or [choice]
            return web.json_response(
                {
                    "id": "chatcmpl-fake", "object": "chat.completion",
                    "created": int(time.time()), "model": self.model,
                    "choices": choices, "usage": usage, **script.reply_extra,
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )  # fmt: skip
        return await self._stream(request, body, script, tokens, finish, usage)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        script: Script,
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.streams_started += 1
        self.open_streams += 1
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model}  # fmt: skip

        def frame(
            delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
        ) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if logprobs is not None:
                choice["logprobs"] = logprobs
            chunk = {**head, "choices": [choice]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        try:
            if script.chunks is not None:
                scripted = [
                    b"data: " + orjson.dumps({**head, **c}) + b"\n\n" for c in script.chunks
                ]
                if (body.get("stream_options") or {}).get("include_usage"):
                    tail = {**head, "choices": [], "usage": usage}
                    scripted.append(b"data: " + orjson.dumps(tail) + b"\n\n")
                scripted.append(b"data: [DONE]\n\n")
                for piece in scripted:  # one write each, as a server sends them
                    await resp.write(piece)
                await resp.write_eof()
                self.streams_finished += 1
                return resp
            if script.role_chunk:
                await resp.write(frame({"role": "assistant", "content": ""}))
            pending: list[bytes] = [
                frame({script.reasoning_field: r}) for r in script.reasoning or ()
            ]
            for i, token in enumerate(tokens):
                if script.hang_after is not None and i == script.hang_after:
                    await resp.write(b"".join(pending))
                    # Silent until the client gives up (aiohttp has no close event to await).
                    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                    self.streams_cut += 1
                    return resp
                if script.die_after is not None and i == script.die_after:
                    request.transport.close()  # type: ignore[union-attr]
                    self.streams_cut += 1
                    return resp
                if script.malformed_after is not None and i == script.malformed_after:
                    await resp.write(b'data: {"choices": [\n\n')
                if script.error_chunk_after is not None and i == script.error_chunk_after:
                    err = script.error_chunk or {
                        "error": {"object": "error", "message": "fake mid-stream failure",
                                  "type": "InternalServerError", "code": 500}}  # fmt: skip
                    await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
                    await resp.write(b"data: [DONE]\n\n")
                    return resp
                if script.token_delay:
                    await asyncio.sleep(script.token_delay)
                if script.stall_after is not None and i == script.stall_after:
                    if pending:
                        await resp.write(b"".join(pending))
                        pending.clear()
                    await asyncio.sleep(script.stall_for)
                logprobs = {"content": [logprob(token, body)]} if body.get("logprobs") else None
                pending.append(frame({"content": token}, logprobs=logprobs))
                if len(pending) >= script.tokens_per_write:
                    await resp.write(b"".join(pending))
                    pending.clear()
            for i, call in enumerate(script.tool_calls or ()):
                pending.extend(frame(delta) for delta in call.deltas(i))
            if script.usage_in_finish_chunk:
                last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                        "usage": usage}  # fmt: skip
                pending.append(b"data: " + orjson.dumps(last) + b"\n\n")
            else:
                pending.append(frame({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                pending.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage})
                               + b"\n\n")  # fmt: skip
            if script.send_done:
                pending.append(b"data: [DONE]\n\n")
            await resp.write(b"".join(pending))
            await resp.write_eof()
            self.streams_finished += 1
            return resp
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_cut += 1
            raise
        finally:
            self.open_streams -= 1
            self.ended_at[str(body["messages"][-1].get("content"))] = time.monotonic()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """vLLM's /v1/completions (text in, ``choices[0].text`` out), whole or streamed."""
        body = await request.json(loads=orjson.loads)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        script = self.scripts.popleft() if self.scripts else self.default
        if script.status != 200:
            raw = script.error_body or {
                "object": "error",
                "message": f"fake error {script.status}",
                "type": "BadRequestError",
                "code": script.status,
            }
            return web.json_response(raw, status=script.status)  # fmt: skip
        prompt = body.get("prompt")
        text = prompt[0] if isinstance(prompt, list) else str(prompt)
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(script.tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        head = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": self.model}  # fmt: skip
        if not body.get("stream"):
            return web.json_response(
                {**head, "usage": usage,
                 "choices": [{"index": 0, "text": "".join(script.tokens), "logprobs": None,
                              "finish_reason": script.finish_reason}]},
            )  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, token in enumerate(script.tokens):
            last = i == len(script.tokens) - 1
            choice = {"index": 0, "text": token, "logprobs": None,
                      "finish_reason": script.finish_reason if last else None}  # fmt: skip
            await resp.write(b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def logprob(token: str, body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's logprobs entry for one token, with ``top_logprobs`` alternatives."""
    data = list(token.encode())
    top = [{"token": token, "logprob": -0.25, "bytes": data}]
    top += [{"token": f"alt{i}", "logprob": -2.0 - i, "bytes": list(f"alt{i}".encode())}
            for i in range(1, int(body.get("top_logprobs") or 0))]  # fmt: skip
    return {"token": token, "logprob": -0.25, "bytes": data, "top_logprobs": top}


# --- vLLM's chunk shapes (its OpenAI server, exclude_unset), for Script(chunks=...) ----------


def _choice(delta: dict[str, Any], index: int = 0, finish: str | None = None,
            **more: Any) -> dict[str, Any]:  # fmt: skip
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **more}


def vllm_tool_call_chunks(
    name: str, pieces: list[str], call_id: str = "chatcmpl-tool-7f3a"
) -> list[dict[str, Any]]:
    """One tool call as vLLM streams it: the role, the call's id and name, its arguments in
    ``pieces``, then the finish reason ``tool_calls``."""
    chunks = [{"choices": [_choice({"role": "assistant", "content": ""})]},
              {"choices": [_choice({"tool_calls": [{"id": call_id, "type": "function", "index": 0,
                                                     "function": {"name": name}}]})]}]  # fmt: skip
    chunks += [
        {"choices": [_choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})]}
        for piece in pieces
    ]
    chunks.append({"choices": [_choice({"content": ""}, finish="tool_calls", stop_reason=None)]})
    return chunks


def vllm_reasoning_chunks(
    reasoning: list[str], content: list[str], key: str = "reasoning_content"
) -> list[dict[str, Any]]:
    """A reasoning model's stream (vLLM with --reasoning-parser): reasoning deltas under
    ``key`` (``reasoning`` in newer vLLM), then content deltas, then the finish reason."""
    chunks = [{"choices": [_choice({"role": "assistant", "content": ""})]}]
    chunks += [{"choices": [_choice({key: piece})]} for piece in reasoning]
    chunks += [{"choices": [_choice({"content": piece})]} for piece in content]
    chunks.append({"choices": [_choice({"content": ""}, finish="stop", stop_reason=None)]})
    return chunks


def vllm_n_chunks(texts: list[list[str]], finish: list[str]) -> list[dict[str, Any]]:
    """``n`` choices as vLLM streams them: one choice per chunk, interleaved by index."""
    chunks = [{"choices": [_choice({"role": "assistant", "content": ""}, index=i)]}
              for i in range(len(texts))]  # fmt: skip
    for step in range(max(len(t) for t in texts)):
        for i, pieces in enumerate(texts):
            if step < len(pieces):
                chunks.append({"choices": [_choice({"content": pieces[step]}, index=i)]})
    chunks += [{"choices": [_choice({"content": ""}, index=i, finish=reason, stop_reason=None)]}
               for i, reason in enumerate(finish)]  # fmt: skip
    return chunks


def logprob_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": token, "logprob": logprob,
                              "bytes": list(token.encode())}]}  # fmt: skip


def vllm_logprob_chunks(tokens: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Content deltas with their logprobs (``logprobs: true, top_logprobs: 1``)."""
    chunks = [{"choices": [_choice({"role": "assistant", "content": ""})]}]
    for token, logprob in tokens:
        choice = _choice({"content": token})
        choice["logprobs"] = {"content": [logprob_entry(token, logprob)]}
        chunks.append({"choices": [choice]})
    chunks.append({"choices": [_choice({"content": ""}, finish="stop", stop_reason=None)]})
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between tokens")
    parser.add_argument("--per-write", type=int, default=1, help="chunks per socket write")
    args = parser.parse_args()
    script = Script(
        tokens=[f" tok{i}" for i in range(args.tokens)],
        token_delay=args.delay_ms / 1000,
        tokens_per_write=args.per_write,
    )
    web.run_app(FakeOpenAI(default=script).app(), host=args.host, port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
