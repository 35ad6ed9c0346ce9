"""The model server may come up after the service (Kubernetes): the service starts and
stays live, readiness says 503 until the model server answers, and the start-up check
waits with backoff (LLM_STARTUP_WAIT) and logs how it went."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.support.servers import FakeServer, ServiceServer, free_port, settings_for


def test_service_waits_for_a_late_model_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_service")
    port = free_port()
    started = time.monotonic()
    service = ServiceServer(settings_for(f"http://127.0.0.1:{port}", startup_wait=60))
    late: FakeServer | None = None
    try:
        assert time.monotonic() - started < 10  # start-up did not block on the model server
        assert httpx.get(f"{service.url}/v1/health_check").status_code == 200
        ready = httpx.get(f"{service.url}/v1/ready", timeout=10)
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["error"]["message"]
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
        early = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=10)
        assert early.status_code == 503
        time.sleep(1.0)  # a few tries with backoff
        late = FakeServer(port=port)  # the model server comes up
        deadline = time.monotonic() + 15
        while httpx.get(f"{service.url}/v1/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        resp = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=10)
        assert resp.status_code == 200
        deadline = time.monotonic() + 15

        def messages() -> list[str]:
            return [r.getMessage() for r in caplog.records]

        while not any("model server answers after" in m for m in messages()):
            assert time.monotonic() < deadline, "the start-up check never saw the server"
            time.sleep(0.1)
        waits = [m for m in messages() if m.startswith("waiting for the model server")]
        assert len(waits) >= 2  # it retried, with growing pauses
        assert "next try in 0.5 s" in waits[0] and "next try in 1.0 s" in waits[1]
    finally:
        service.close()
        if late is not None:
            late.close()


def test_startup_wait_gives_up_but_stays_alive(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_service")
    service = ServiceServer(settings_for(f"http://127.0.0.1:{free_port()}", startup_wait=1.0))
    try:
        deadline = time.monotonic() + 10
        while not any("LLM_STARTUP_WAIT" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the start-up check never gave up"
            time.sleep(0.1)
        assert httpx.get(f"{service.url}/v1/health_check").status_code == 200
        assert httpx.get(f"{service.url}/v1/ready", timeout=10).status_code == 503
    finally:
        service.close()
