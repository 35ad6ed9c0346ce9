"""Operations: Prometheus metrics, request ids, access logs and OpenTelemetry spans.

Everything against real servers: the service under uvicorn in front of the fake model
server; tracing through the SDK's in-memory exporter, and once through the real OTLP/HTTP
exporter into a collector stand-in on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from llm_service.observability.logs import handler_for
from llm_service.settings import Settings, SettingsError
from tests.support import ROOT
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import FakeServer, LoopThread, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames

CHAT = "/v1/chat/completions"
MARKER = "zebra-quartz-7731"  # user text that must never reach metrics or INFO logs
SECRET = "sk-never-log-this-key"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def observed(fake_server: FakeServer, spans: InMemorySpanExporter) -> Iterator[ServiceServer]:
    """A service of its own (fresh metrics) with tracing into ``spans`` and an API key."""
    settings = settings_for(
        fake_server.url, model_server="vllm", vllm_api_key=SECRET, request_timeout=2.0
    )
    server = ServiceServer(settings, span_exporter=spans)
    yield server
    server.close()


def chat(server: ServiceServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{CHAT}", json=body, headers=headers, timeout=30)


def body(stream: bool, text: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": stream, **extra}


def scrape(server: ServiceServer) -> str:
    resp = httpx.get(f"{server.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when the labelled series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def label_values(text: str, name: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and label in s.labels
    }


# --- settings ------------------------------------------------------------------------------


def test_operations_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLM_LOG_FORMAT", "LLM_METRICS_ENABLED", "LLM_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.load()
    assert (defaults.log_format, defaults.metrics_enabled, defaults.otlp_endpoint) == (
        "json", True, None,
    )  # fmt: skip
    monkeypatch.setenv("LLM_LOG_FORMAT", " TEXT ")
    monkeypatch.setenv("LLM_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("LLM_METRICS_ENABLED", "false")
    loaded = Settings.load()
    assert (loaded.log_format, loaded.metrics_enabled, loaded.otlp_endpoint) == (
        "text", False, "http://collector:4318",
    )  # fmt: skip
    monkeypatch.setenv("LLM_LOG_FORMAT", "xml")
    monkeypatch.setenv("LLM_OTLP_ENDPOINT", "collector:4318")
    with pytest.raises(SettingsError) as err:
        Settings.load()
    assert "LLM_LOG_FORMAT: Input should be 'json' or 'text'" in str(err.value)
    assert "LLM_OTLP_ENDPOINT: 'collector:4318' is not an http(s) URL" in str(err.value)


# --- metrics -------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_latencies(
    observed: ServiceServer, fake: FakeOpenAI
) -> None:
    before = scrape(observed)
    fake.push(Script(token_delay=0.02))  # five tokens in five separate upstream reads
    stream = chat(observed, body(True))
    assert stream.status_code == 200 and content_of(parse_frames(stream.text))
    whole = chat(observed, body(False))
    assert whole.status_code == 200
    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llm_requests_total", route=CHAT, status="200") == 2
    assert delta("llm_request_duration_seconds_count", route=CHAT) == 2
    assert delta("llm_time_to_first_token_seconds_count") == 1  # streams only
    # One observation per upstream read that carried tokens, after the first one.
    assert delta("llm_inter_token_latency_seconds_count") == 4
    assert delta("llm_inter_token_latency_seconds_bucket", le="0.001") == 0  # 20 ms apart
    assert delta("llm_completion_tokens_total") == 10  # the fake's usage: 5 + 5
    assert delta("llm_prompt_tokens_total") == 2  # "Hi", counted as one word each time
    assert value(after, "llm_generations_in_flight") == 0
    assert value(after, "llm_embedded_server_state", state="disabled") == 1
    assert value(after, "llm_embedded_server_state", state="running") == 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_in_flight_generations_while_streaming(observed: ServiceServer, fake: FakeOpenAI) -> None:
    fake.push(Script(token_delay=0.3))
    with httpx.stream("POST", f"{observed.url}{CHAT}", json=body(True), timeout=30) as resp:
        chunks = resp.iter_bytes()
        assert next(chunks).startswith(b"data: ")
        assert value(scrape(observed), "llm_generations_in_flight") == 1
        rest = b"".join(chunks)
    assert b"[DONE]" in rest
    assert value(scrape(observed), "llm_generations_in_flight") == 0


def test_client_that_leaves_mid_stream_counts_as_499(
    observed: ServiceServer, fake: FakeOpenAI
) -> None:
    before = value(scrape(observed), "llm_requests_total", route=CHAT, status="499")
    fake.push(Script(tokens=[f" t{i}" for i in range(200)], token_delay=0.05))  # 10 s
    with httpx.stream("POST", f"{observed.url}{CHAT}", json=body(True), timeout=30) as resp:
        assert next(resp.iter_bytes()).startswith(b"data: ")
    # The service notices at once (well before LLM_REQUEST_TIMEOUT, 2 s here), closes the
    # upstream stream and records the request.
    deadline = time.monotonic() + 1.0
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_streams == 0 and fake.streams_cut == 1 and fake.streams_finished == 0
    text = scrape(observed)
    assert value(text, "llm_requests_total", route=CHAT, status="499") == before + 1
    assert value(text, "llm_generations_in_flight") == 0
    # The service still serves.
    assert chat(observed, body(True)).status_code == 200


def test_upstream_errors_by_kind_and_endpoint(
    observed: ServiceServer, fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    endpoint = f"http://127.0.0.1:{fake_server.port}"
    before = scrape(observed)
    fake.push(Script(status=500), Script(status=503), Script(die_after=2, tokens_per_write=1))
    assert chat(observed, body(False)).status_code == 502
    assert chat(observed, body(False)).status_code == 503
    broken = chat(observed, body(True))  # dies after two tokens: 200, then an error event
    assert broken.status_code == 200 and parse_frames(broken.text)[-2].event == "error"
    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llm_upstream_errors_total", kind="upstream_error", endpoint=endpoint) == 2
    assert delta("llm_upstream_errors_total", kind="upstream_unavailable", endpoint=endpoint) == 1
    assert delta("llm_requests_total", route=CHAT, status="502") == 1
    assert delta("llm_requests_total", route=CHAT, status="503") == 1
    assert value(after, "llm_generations_in_flight") == 0


def test_docs_dropped_by_the_token_budget(observed: ServiceServer, fake: FakeOpenAI) -> None:
    before = value(scrape(observed), "llm_documents_dropped_total")
    docs = [
        {"text": " ".join(f"d{i}w{j}" for j in range(1000)),
         "metadata": {"url": f"https://ex.com/{i}", "citation_id": i + 1}}
        for i in range(6)
    ]  # fmt: skip
    resp = chat(observed, {"question": "q?", "reranked_docs": docs, "max_new_tokens": 1000,
                           "stream": False})  # fmt: skip
    assert resp.json()["data"]["context"]["docs_dropped"] == 4
    assert value(scrape(observed), "llm_documents_dropped_total") - before == 4


def test_labels_stay_bounded(observed: ServiceServer, fake: FakeOpenAI) -> None:
    assert chat(observed, body(True, f"tell me about {MARKER}")).status_code == 200
    assert chat(observed, {"messages": [{"role": MARKER, "content": "x"}]}).status_code == 422
    assert httpx.get(f"{observed.url}/v1/{MARKER}").status_code == 404
    assert httpx.get(f"{observed.url}/v1/health_check").status_code == 200
    text = scrape(observed)
    assert MARKER not in text
    routes = label_values(text, "llm_requests_total", "route")
    assert {CHAT, "/v1/health_check", "other"} <= routes
    declared = set(httpx.get(f"{observed.url}/openapi.json").json()["paths"])
    assert routes <= declared | {"/docs", "/redoc", "other"}
    assert value(text, "llm_requests_total", route="other", status="404") >= 1
    assert value(text, "llm_requests_total", route=CHAT, status="422") >= 1


def test_metrics_can_be_switched_off(fake_server: FakeServer, fake: FakeOpenAI) -> None:
    server = ServiceServer(settings_for(fake_server.url, metrics_enabled=False))
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        assert chat(server, body(False)).status_code == 200
        assert server.app.state.observability.metrics is None
    finally:
        server.close()


# --- request ids -----------------------------------------------------------------------------


def test_request_id_is_kept_returned_and_passed_on(
    observed: ServiceServer, fake: FakeOpenAI
) -> None:
    for stream in (True, False):
        resp = chat(observed, body(stream), **{"X-Request-ID": f"req-{stream}-1"})
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == f"req-{stream}-1"
        assert fake.headers[-1]["X-Request-ID"] == f"req-{stream}-1"
    # Errors and the other routes carry it too.
    bad = chat(observed, {"messages": []}, **{"X-Request-ID": "req-bad"})
    assert bad.status_code == 422 and bad.headers["x-request-id"] == "req-bad"
    health = httpx.get(f"{observed.url}/v1/health_check", headers={"X-Request-ID": "req-h"})
    assert health.headers["x-request-id"] == "req-h"


def test_request_id_generated_when_missing_or_unusable(
    observed: ServiceServer, fake: FakeOpenAI
) -> None:
    first = chat(observed, body(False)).headers["x-request-id"]
    second = chat(observed, body(False)).headers["x-request-id"]
    assert HEX32.fullmatch(first) and HEX32.fullmatch(second) and first != second
    assert fake.headers[-1]["X-Request-ID"] == second
    for unusable in ("a b", "x" * 200, "<script>"):
        got = chat(observed, body(False), **{"X-Request-ID": unusable}).headers["x-request-id"]
        assert HEX32.fullmatch(got)


def test_request_id_reaches_the_model_server_through_the_chain(
    observed: ServiceServer, fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    """The LangServe routes and a chat route that streams through the chain's model step pass
    the id on too (from the request's context)."""
    question = {"question": "What is deep learning?", "reranked_docs": []}
    for route in ("invoke", "stream"):
        resp = httpx.post(f"{observed.url}/llm/{route}", json={"input": question},
                          headers={"X-Request-ID": f"ls-{route}"}, timeout=30)  # fmt: skip
        assert resp.status_code == 200 and resp.headers["x-request-id"] == f"ls-{route}"
        assert fake.headers[-1]["X-Request-ID"] == f"ls-{route}"
    via_chain = ServiceServer(settings_for(fake_server.url, route_via_chain=True))
    try:
        for stream in (True, False):
            resp = chat(via_chain, body(stream), **{"X-Request-ID": f"chain-{stream}"})
            assert resp.status_code == 200
            assert fake.headers[-1]["X-Request-ID"] == f"chain-{stream}"
    finally:
        via_chain.close()
    text = scrape(observed)
    assert value(text, "llm_requests_total", route="/llm/invoke", status="200") >= 1
    assert value(text, "llm_requests_total", route="/llm/stream", status="200") >= 1


# --- logs -------------------------------------------------------------------------------------


class CapturedLogs:
    """The service's log lines in a given format, from the root logger at INFO."""

    def __init__(self, log_format: str) -> None:
        self.stream = io.StringIO()
        self.handler = handler_for(settings_for(None, log_format=log_format), self.stream)
        self.root = logging.getLogger()

    def __enter__(self) -> CapturedLogs:
        self.level = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)

    def text(self) -> str:
        time.sleep(0.05)  # the service logs on its own thread, after the response's last byte
        return self.stream.getvalue()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]


def test_json_access_line_per_request_without_prompt_or_secrets(
    observed: ServiceServer, fake: FakeOpenAI
) -> None:
    docs = [{"text": f"document about {MARKER}", "metadata": {"url": "u", "citation_id": 1}}]
    with CapturedLogs("json") as logs:
        stream = chat(observed, body(True, f"what is {MARKER}?"), **{"X-Request-ID": "log-1"})
        rag = chat(observed, {"question": f"{MARKER}?", "reranked_docs": docs, "stream": False},
                   **{"X-Request-ID": "log-2"})  # fmt: skip
        fake.push(Script(status=500))
        failed = chat(observed, body(False, MARKER), **{"X-Request-ID": "log-3"})
        lines = logs.json_lines()
        raw = logs.text()
    assert (stream.status_code, rag.status_code, failed.status_code) == (200, 200, 502)
    assert MARKER not in raw and SECRET not in raw
    access = {line["request_id"]: line for line in lines if line["logger"] == "llm_service.access"}
    assert set(access) == {"log-1", "log-2", "log-3"}  # exactly one line per request
    first = access["log-1"]
    assert first["level"] == "INFO" and first["message"].startswith(f"POST {CHAT} ")
    assert first["status"] == 200 and first["stream"] is True
    assert first["completion_tokens"] == 5 and first["prompt_tokens"] == 3
    assert first["finish_reason"] == "stop"
    assert 0 < first["ttft_ms"] <= first["duration_ms"]
    assert access["log-2"]["docs_used"] == 1 and access["log-2"]["stream"] is False
    assert access["log-3"]["status"] == 502 and access["log-3"]["error"] == "upstream_error"
    # Other lines logged while serving a request carry its id too.
    warning = next(line for line in lines if line["level"] == "WARNING")
    assert warning["request_id"] == "log-3" and "-> 502" in warning["message"]


def test_text_log_format(observed: ServiceServer, fake: FakeOpenAI) -> None:
    with CapturedLogs("text") as logs:
        chat(observed, body(False), **{"X-Request-ID": "txt-1"})
        httpx.get(f"{observed.url}/v1/health_check")  # probes log at DEBUG: not shown
        text = logs.text()
    lines = [line for line in text.splitlines() if "llm_service.access" in line]
    assert len(lines) == 1
    assert " INFO llm_service.access [txt-1] POST /v1/chat/completions " in lines[0]
    assert "status=200" in lines[0] and "completion_tokens=5" in lines[0]


def test_serve_writes_json_lines(fake_server: FakeServer) -> None:
    """``llm-service serve`` itself: uvicorn's lines and the access lines are JSON."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env = {**clean, "LLM_MODEL_SERVER_ENDPOINT": fake_server.url, "LLM_MODEL_SERVER": "openai",
           "LLM_MODEL_NAME": "fake-model", "LLM_USVC_PORT": str(port), "LLM_LOG_FORMAT": "json",
           "LLM_USVC_HOST": "127.0.0.1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_service", "serve"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health_check").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        resp = httpx.post(f"http://127.0.0.1:{port}{CHAT}", json=body(False),
                          headers={"X-Request-ID": "serve-1"})  # fmt: skip
        assert resp.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    access = [line for line in lines if line["logger"] == "llm_service.access"]
    assert [line["request_id"] for line in access] == ["serve-1"]
    assert all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)


@pytest.fixture
def queued_root() -> Iterator[None]:
    """Puts the root logger's handlers and level back after a test reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("queued_root")
def test_queued_logging_writes_every_line_in_order_with_its_request_id() -> None:
    """``configure_logging`` (what ``serve`` runs): records are queued on the caller's thread
    and written by the writer thread; each keeps the request id and the message of the
    moment it was logged, and everything queued is written by ``stop_logging``."""
    from llm_service.context import request_id
    from llm_service.observability.logs import configure_logging, stop_logging

    stream = io.StringIO()
    writer = configure_logging(settings_for(None, log_format="json"), stream)
    log = logging.getLogger("llm_service.test")
    changing = ["before"]
    token = request_id.set("queued-1")
    try:
        for i in range(200):
            log.info("line %d", i)
        log.warning("args %s", changing)
        changing[0] = "after"  # changed once the call returned: the line says "before"
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("failed")
    finally:
        request_id.reset(token)
    log.debug("below the level")
    stop_logging(writer)
    assert not writer.thread.is_alive()
    log.info("after the stop")  # straight through the writer's handler
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines[:200]] == [f"line {i}" for i in range(200)]
    assert lines[200]["message"] == "args ['before']"
    assert lines[201]["message"] == "failed" and "ValueError" in lines[201]["exc_info"]
    assert {line["request_id"] for line in lines[:202]} == {"queued-1"}
    assert lines[202]["message"] == "after the stop" and lines[202]["request_id"] == "-"
    assert len(lines) == 203


@pytest.mark.usefixtures("queued_root")
def test_queued_access_lines_of_a_running_service(
    fake_server: FakeServer, fake: FakeOpenAI
) -> None:
    """The access line's message is built on the writer thread, from the record's fields."""
    from llm_service.observability.logs import configure_logging, stop_logging

    stream = io.StringIO()
    writer = configure_logging(settings_for(None, log_format="text"), stream)
    server = ServiceServer(settings_for(fake_server.url))
    try:
        for i in range(3):
            resp = chat(server, body(i == 1), **{"X-Request-ID": f"q-{i}"})
            assert resp.status_code == 200
    finally:
        server.close()
        stop_logging(writer)
    lines = [line for line in stream.getvalue().splitlines() if "llm_service.access" in line]
    assert [re.search(r"\[(q-\d)\]", line)[1] for line in lines] == ["q-0", "q-1", "q-2"]  # type: ignore[index]
    assert all("POST /v1/chat/completions status=200 " in line for line in lines)
    assert "stream=True" in lines[1] and "completion_tokens=5" in lines[1]


# --- tracing ----------------------------------------------------------------------------------


def finished(spans: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    deadline = time.monotonic() + 2
    while True:
        got = {
            s.name: s
            for s in spans.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id
        }
        if len(got) >= 3 or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_spans_request_prompt_model(
    observed: ServiceServer, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
    resp = chat(observed, body(True), traceparent=traceparent)
    assert resp.status_code == 200
    got = finished(spans, int(caller_trace, 16))
    assert set(got) == {f"POST {CHAT}", "prompt", "model"}
    request, prompt, model = got[f"POST {CHAT}"], got["prompt"], got["model"]
    assert request.kind == SpanKind.SERVER and model.kind == SpanKind.CLIENT
    assert request.parent is not None and request.parent.span_id == 0x00F067AA0BA902B7
    assert request.context is not None and model.context is not None
    for child in (prompt, model):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
    assert request.attributes is not None and model.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["llm.request_id"] == resp.headers["x-request-id"]
    assert model.attributes["gen_ai.usage.output_tokens"] == 5
    # The model server got the model span's context: it can join the trace.
    sent = fake.headers[-1]["traceparent"]
    assert sent == f"00-{caller_trace}-{model.context.span_id:016x}-01"


def test_failed_call_marks_the_spans(
    observed: ServiceServer, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    fake.push(Script(status=500))
    resp = chat(observed, body(False), traceparent=f"00-{trace}-b7ad6b7169203331-01")
    assert resp.status_code == 502
    got = finished(spans, int(trace, 16))
    assert got[f"POST {CHAT}"].status.status_code == StatusCode.ERROR
    assert got["model"].status.status_code == StatusCode.ERROR
    assert "500" in (got["model"].status.description or "")


def test_tracing_off_imports_no_sdk(fake_server: FakeServer) -> None:
    """Without LLM_OTLP_ENDPOINT building the app and serving load no OpenTelemetry module
    (langsmith, a LangChain dependency, may import parts of the SDK itself when it is
    installed: those are loaded by the imports alone) and create no tracer."""
    script = f"""
import sys, httpx
import llm_service.http.app
from tests.support import servers
def otel():
    return {{m for m in sys.modules if m.startswith("opentelemetry")}}
imported = otel()
server = servers.ServiceServer(servers.settings_for({fake_server.url!r}))
assert httpx.post(server.url + "{CHAT}", json={{"messages": [{{"role": "user", "content": "x"}}],
                  "stream": True}}).status_code == 200
assert server.app.state.observability.tracing is None
server.close()
print(sorted(otel() - imported), [m for m in otel() if m.startswith("opentelemetry.exporter")])
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []"


def test_otlp_exporter_sends_to_the_collector(fake_server: FakeServer) -> None:
    """LLM_OTLP_ENDPOINT: spans leave over OTLP/HTTP (protobuf) to <endpoint>/v1/traces."""
    received: list[tuple[str, str, int]] = []
    got_one = threading.Event()

    async def traces(request: web.Request) -> web.Response:
        data = await request.read()
        received.append((request.path, request.headers.get("Content-Type", ""), len(data)))
        got_one.set()
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    loop = LoopThread("otlp-collector")
    runner = web.AppRunner(app, access_log=None)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    loop.run(start())
    try:
        server = ServiceServer(
            settings_for(fake_server.url, otlp_endpoint=f"http://127.0.0.1:{port}")
        )
        try:
            assert chat(server, body(False)).status_code == 200
        finally:
            server.close()  # shutting down flushes the batch of spans
        assert got_one.wait(10)
        path, content_type, size = received[0]
        assert path == "/v1/traces" and content_type == "application/x-protobuf" and size > 0
    finally:
        loop.run(runner.cleanup())
        loop.close()
