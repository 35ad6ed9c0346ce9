"""Several replicas in LLM_MODEL_SERVER_ENDPOINT: least in-flight spreading, cool-down of a
failing replica, retry on another replica before the first token and never after it. Two
real fake servers; one is killed mid-test and brought back on the same port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_service.settings import Settings, SettingsError
from tests.support.fake_openai import Script
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import content_of, parse_frames

COOLDOWN = 2.0


@pytest.fixture
def pair() -> Iterator[tuple[FakeServer, FakeServer]]:
    a, b = FakeServer(), FakeServer()
    yield a, b
    a.close()  # idempotent: some tests kill a replica themselves
    b.close()


def start_service(transport: str, *replicas: FakeServer, **overrides: Any) -> ServiceServer:
    endpoint = ",".join(r.url for r in replicas)
    values: dict[str, Any] = {"replica_cooldown": COOLDOWN, "startup_wait": 0, **overrides}
    values["upstream_transport"] = transport
    return ServiceServer(settings_for(endpoint, **values))


def ask(service: ServiceServer, stream: bool = True) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def test_requests_take_turns_when_idle(transport: str, pair: tuple[FakeServer, FakeServer]) -> None:
    a, b = pair
    service = start_service(transport, a, b)
    try:
        for _ in range(6):
            assert ask(service).status_code == 200
        assert len(a.fake.requests) == 3 and len(b.fake.requests) == 3
    finally:
        service.close()


def test_least_in_flight_gets_the_request(
    transport: str, pair: tuple[FakeServer, FakeServer]
) -> None:
    a, b = pair
    slow = Script(tokens=[f" s{i}" for i in range(10)], token_delay=0.2)
    a.fake.default = b.fake.default = slow
    service = start_service(transport, a, b)
    try:
        long_one = threading.Thread(target=ask, args=(service,))
        long_one.start()
        deadline = time.monotonic() + 5
        while a.fake.open_streams + b.fake.open_streams == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy, idle = (a, b) if a.fake.open_streams else (b, a)
        busy.fake.default = idle.fake.default = Script()
        for _ in range(3):  # while one stream is open on `busy`, all go to `idle`
            assert ask(service).status_code == 200
        assert len(busy.fake.requests) == 1 and len(idle.fake.requests) == 3
        long_one.join(10)
    finally:
        service.close()


def test_killed_replica_is_retried_elsewhere_cooled_down_and_used_again(
    transport: str,
    pair: tuple[FakeServer, FakeServer],
) -> None:
    a, b = pair
    service = start_service(transport, a, b)
    try:
        assert ask(service).status_code == 200
        assert ask(service).status_code == 200
        assert len(a.fake.requests) == 1 and len(b.fake.requests) == 1
        a_port = a.port
        a.close()  # replica a dies
        for stream in (True, False, True, True):
            resp = ask(service, stream=stream)
            assert resp.status_code == 200  # retried on b before the first token
        assert len(b.fake.requests) == 5
        # a is cooled down: back on the same port it gets nothing until the cool-down ends
        revived = FakeServer(port=a_port)
        try:
            assert ask(service).status_code == 200
            assert len(revived.fake.requests) == 0
            time.sleep(COOLDOWN + 0.2)
            for _ in range(4):
                assert ask(service).status_code == 200
            assert len(revived.fake.requests) == 2  # turns again after the cool-down
        finally:
            revived.close()
    finally:
        service.close()


def test_all_replicas_down_is_503(transport: str, pair: tuple[FakeServer, FakeServer]) -> None:
    a, b = pair
    service = start_service(transport, a, b)
    try:
        a.close()
        b.close()
        resp = ask(service)
        assert resp.status_code == 503
        assert "unreachable" in resp.json()["error"]["message"]
        assert httpx.get(f"{service.url}/v1/ready", timeout=10).status_code == 503
    finally:
        service.close()


def test_overloaded_replica_is_retried_on_the_other(
    transport: str, pair: tuple[FakeServer, FakeServer]
) -> None:
    a, b = pair
    busy = Script(status=503, error_body={"object": "error", "message": "overloaded"})
    a.fake.default = b.fake.default = busy
    a.fake.push(Script())
    b.fake.push(Script())
    service = start_service(transport, a, b)
    try:
        # whichever replica is asked first answers 503 on its second request; then the other
        assert ask(service).status_code == 200
        assert ask(service).status_code == 200
        resp = ask(service)  # both now answer 503: the client sees it, with Retry-After
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
    finally:
        service.close()


def test_no_retry_once_tokens_were_sent(
    transport: str, pair: tuple[FakeServer, FakeServer]
) -> None:
    a, b = pair
    dying = Script(tokens=[f" d{i}" for i in range(6)], die_after=3)
    a.fake.default = b.fake.default = dying
    service = start_service(transport, a, b)
    try:
        resp = ask(service)
        assert resp.status_code == 200
        frames = parse_frames(resp.text)
        assert content_of(frames) == " d0 d1 d2"
        assert [f.event for f in frames].count("error") == 1
        assert frames[-1].raw == "[DONE]"
        assert len(a.fake.requests) + len(b.fake.requests) == 1  # not sent again
    finally:
        service.close()


def test_readiness_is_ready_while_one_replica_answers(
    transport: str,
    pair: tuple[FakeServer, FakeServer],
) -> None:
    a, b = pair
    service = start_service(transport, a, b)
    try:
        a.close()
        for _ in range(2):
            resp = httpx.get(f"{service.url}/v1/ready", timeout=10)
            assert resp.status_code == 200
    finally:
        service.close()


def test_endpoint_list_is_validated() -> None:
    settings = Settings.load(None, model_server_endpoint=" http://a:8000/ , https://b:8001")
    assert settings.model_server_endpoint == "http://a:8000,https://b:8001"
    with pytest.raises(SettingsError, match=r"LLM_MODEL_SERVER_ENDPOINT.*'ftp://b' is not"):
        Settings.load(None, model_server_endpoint="http://a:8000,ftp://b")


# --- routing: prefix affinity, sessions, load from /metrics -----------------------------------


@pytest.fixture
def trio() -> Iterator[tuple[FakeServer, FakeServer, FakeServer]]:
    servers = (FakeServer(), FakeServer(), FakeServer())
    yield servers
    for server in servers:
        server.close()


def document(name: str) -> str:
    """A retrieved document long enough to fill several prompt blocks."""
    return f"[{name}] " + " ".join(f"{name}-fact-{i}" for i in range(150))


def ask_about(
    service: ServiceServer,
    doc: str,
    question: str,
    *,
    stream: bool = True,
    headers: dict[str, str] | None = None,
    user: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": f"Answer from this document only.\n{doc}"},
            {"role": "user", "content": question},
        ],
        "stream": stream,
    }
    if user is not None:
        body["user"] = user
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def counts(*servers: FakeServer) -> list[int]:
    return [len(s.fake.requests) for s in servers]


def test_a_shared_prefix_stays_on_one_replica_and_other_prefixes_spread(
    trio: tuple[FakeServer, FakeServer, FakeServer], transport: str
) -> None:
    service = start_service(transport, *trio)  # prefix_affinity is the default
    try:
        doc = document("handbook")
        for i in range(6):
            assert ask_about(service, doc, f"Question {i}?", stream=i % 2 == 0).status_code == 200
        assert sorted(counts(*trio)) == [0, 0, 6]
        for s in trio:
            s.fake.reset()
        for i in range(6):
            assert ask_about(service, document(f"doc{i}"), "Summary?").status_code == 200
        assert counts(*trio) == [2, 2, 2]  # unknown prefixes: the least loaded, in turns
    finally:
        service.close()


def test_least_inflight_spreads_a_shared_prefix(
    trio: tuple[FakeServer, FakeServer, FakeServer], transport: str
) -> None:
    service = start_service(transport, *trio, routing="least_inflight")
    try:
        for i in range(6):
            assert ask_about(service, document("handbook"), f"Q{i}?").status_code == 200
        assert counts(*trio) == [2, 2, 2]
    finally:
        service.close()


def test_a_killed_replica_costs_no_request_and_its_prefixes_move(
    trio: tuple[FakeServer, FakeServer, FakeServer], transport: str
) -> None:
    service = start_service(transport, *trio)
    doc = document("runbook")
    try:
        assert ask_about(service, doc, "First?").status_code == 200
        owner = next(s for s in trio if s.fake.requests)
        port = owner.port
        owner.close()
        for i, stream in enumerate((True, False, True, True)):
            resp = ask_about(service, doc, f"Again {i}?", stream=stream)
            assert resp.status_code == 200  # retried on another replica before the first token
            if stream:
                assert parse_frames(resp.text)[-1].raw == "[DONE]"
        alive = [s for s in trio if s is not owner]
        assert sorted(counts(*alive)) == [0, 4]  # the prefix moved to one replica, whole
        heir = next(s for s in alive if s.fake.requests)
        revived = FakeServer(port=port)
        try:
            time.sleep(COOLDOWN + 0.2)  # the old owner is back and cooled down
            for i in range(3):
                assert ask_about(service, doc, f"Later {i}?").status_code == 200
            assert len(revived.fake.requests) == 0  # the prefix stays with its heir
            assert len(heir.fake.requests) == 7
        finally:
            revived.close()
    finally:
        service.close()


def test_a_session_header_or_user_keeps_a_conversation_on_one_replica(
    trio: tuple[FakeServer, FakeServer, FakeServer], transport: str
) -> None:
    service = start_service(transport, *trio)
    try:
        for i in range(4):  # different documents, one session
            resp = ask_about(service, document(f"d{i}"), "Q?", headers={"X-Session-ID": "alice"})
            assert resp.status_code == 200
        assert sorted(counts(*trio))[-1] == 4
        for s in trio:
            s.fake.reset()
        for i in range(4):  # OpenAI's user field does the same
            assert ask_about(service, document(f"e{i}"), "Q?", user="bob").status_code == 200
        assert sorted(counts(*trio))[-1] == 4
        for s in trio:
            s.fake.reset()
        for i in range(12):  # sessions spread over the replicas
            resp = ask_about(service, document(f"s{i}"), "Q?", headers={"X-Session-ID": f"s{i}"})
            assert resp.status_code == 200
        assert sum(1 for n in counts(*trio) if n) >= 2
    finally:
        service.close()


def test_load_reported_by_metrics_moves_a_prefix_off_a_busy_replica(
    pair: tuple[FakeServer, FakeServer], transport: str
) -> None:
    a, b = pair
    a.fake.load_metrics = b.fake.load_metrics = (0, 0)
    service = start_service(transport, a, b, replica_metrics_interval=0.1)
    doc = document("faq")
    try:
        assert ask_about(service, doc, "One?").status_code == 200
        owner, other = (a, b) if a.fake.requests else (b, a)
        assert ask_about(service, doc, "Two?").status_code == 200
        assert len(owner.fake.requests) == 2  # affinity while both are idle
        owner.fake.load_metrics = (8, 20)  # other clients keep it busy
        time.sleep(0.5)  # a few polls
        assert ask_about(service, doc, "Three?").status_code == 200
        assert len(other.fake.requests) == 1
    finally:
        service.close()
