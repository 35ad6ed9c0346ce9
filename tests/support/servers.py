"""Real servers on 127.0.0.1 for the tests, each on its own event loop in a thread.

Tests may then be plain synchronous code (httpx, the openai SDK) without blocking any
server's loop.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import uvicorn
from aiohttp import web
from starlette.middleware import Middleware

from llm_service.http.app import create_app
from llm_service.http.server import uvicorn_config
from llm_service.settings import Settings
from llm_service.upstream.embedded import free_port as free_port
from tests.support.fake_openai import FakeOpenAI

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FakeServer:
    """``FakeOpenAI`` served by aiohttp on a free port."""

    def __init__(
        self,
        fake: FakeOpenAI | None = None,
        *,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        app: web.Application | None = None,
    ) -> None:
        self.fake = fake or FakeOpenAI()
        self.port = port or free_port()
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._ssl = ssl_context
        self._closed = False
        self._loop = LoopThread("fake-openai")
        self._runner = web.AppRunner(app or self.fake.app(), access_log=None)
        self._loop.run(self._start())

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await site.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.run(self._runner.cleanup())
        self._loop.close()


class ServiceServer:
    """The service itself under uvicorn (uvloop + httptools, as in production)."""

    def __init__(
        self,
        settings: Settings,
        startup_timeout: float = 240,
        *,
        hot_path: bool = True,
        span_exporter: Any = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(
            settings, middleware=middleware, hot_path=hot_path, span_exporter=span_exporter
        )
        config = uvicorn_config(
            self.app, settings, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="service", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("service failed to start (see log)")
            if time.monotonic() > deadline:
                raise RuntimeError("service did not start in time")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def settings_for(endpoint: str | None, **overrides: Any) -> Settings:
    """Settings for a test service, independent of the caller's environment."""
    values: dict[str, Any] = {
        "model_server": "openai",
        "model_name": "fake-model",
        # A proxy in the caller's environment would catch the servers on 127.0.0.1.
        "http_proxy": None,
        "https_proxy": None,
        "no_proxy": None,
        **overrides,
    }
    return Settings(_env_file=None, model_server_endpoint=endpoint, **values)


def ask(service: ServiceServer, stream: bool) -> httpx.Response:
    """One short chat request to ``service``, streamed or whole."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def every_path(url: str, **overrides: Any) -> list[httpx.Response]:
    """/v1/ready (GET /v1/models), a stream and a whole answer through a fresh service in
    front of ``url``; the service is closed before returning (so a proxy in between has
    logged its connections)."""
    service = ServiceServer(settings_for(url, startup_wait=0, **overrides))
    try:
        ready = httpx.get(f"{service.url}/v1/ready", timeout=20)
        return [ready, ask(service, True), ask(service, False)]
    finally:
        service.close()
