"""Replicas found by DNS while the service runs: a real DNS server on 127.0.0.1 answers for
a name with 127.0.0.x addresses, where fake model servers listen on one port each (the
whole of 127/8 is loopback on Linux), as the pods behind a Kubernetes headless Service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from llm_service.settings import Settings, SettingsError
from tests.support.dns_server import DnsServer
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import LoopThread, ServiceServer, free_port, settings_for
from tests.support.sse import content_of, parse_frames

NAME = "vllm.replicas.test"
REFRESH = 0.2


class PodServer:
    """The fake model server on one loopback address (``FakeServer`` binds 127.0.0.1)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.fake = FakeOpenAI()
        self._loop = LoopThread(f"pod-{host}")
        self._runner = web.AppRunner(self.fake.app(), access_log=None)
        self._loop.run(self._start(port))

    async def _start(self, port: int) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, port).start()

    def close(self) -> None:
        self._loop.run(self._runner.cleanup())
        self._loop.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer(NAME)
    yield server
    server.close()


@pytest.fixture
def pods() -> Iterator[tuple[int, dict[str, PodServer]]]:
    port = free_port()
    servers = {host: PodServer(host, port) for host in ("127.0.0.2", "127.0.0.3")}
    yield port, servers
    for server in servers.values():
        server.close()


def start_service(transport: str, dns: DnsServer, port: int, **overrides: Any) -> ServiceServer:
    values: dict[str, Any] = {
        "upstream_transport": transport,
        "replica_discovery": "dns",
        "replica_dns_server": dns.address,
        "replica_refresh": REFRESH,
        "startup_wait": 0,
        **overrides,
    }
    return ServiceServer(settings_for(f"http://{NAME}:{port}", **values))


def ask(service: ServiceServer, doc: str) -> httpx.Response:
    body = {
        "messages": [
            {"role": "system", "content": " ".join(f"{doc}-{i}" for i in range(120))},
            {"role": "user", "content": "Summary?"},
        ],
        "stream": True,
    }
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def test_a_replica_that_appears_in_dns_gets_requests(
    dns: DnsServer, pods: tuple[int, dict[str, PodServer]], transport: str
) -> None:
    port, servers = pods
    first, second = servers["127.0.0.2"], servers["127.0.0.3"]
    dns.addresses = ["127.0.0.2"]
    service = start_service(transport, dns, port)
    try:
        # The name itself resolves nowhere but on our DNS server: these only succeed
        # because the service asked it at start-up.
        for i in range(3):
            assert ask(service, f"doc{i}").status_code == 200
        assert len(first.fake.requests) == 3 and not second.fake.requests
        dns.addresses = ["127.0.0.2", "127.0.0.3"]  # a pod becomes ready
        deadline = time.monotonic() + 5
        i = 0
        while not second.fake.requests:
            assert time.monotonic() < deadline, "the new replica got nothing"
            assert ask(service, f"new{i}").status_code == 200
            i += 1
            time.sleep(0.05)
        assert dns.queries >= 2  # looked up again while running
    finally:
        service.close()


def test_a_replica_that_leaves_dns_finishes_its_stream_and_gets_no_more(
    dns: DnsServer, pods: tuple[int, dict[str, PodServer]], transport: str
) -> None:
    port, servers = pods
    dns.addresses = ["127.0.0.2", "127.0.0.3"]
    slow = Script(tokens=[f" t{i}" for i in range(8)], token_delay=0.15)
    for server in servers.values():
        server.fake.default = slow
    service = start_service(transport, dns, port)
    try:
        result: list[httpx.Response] = []
        long_one = threading.Thread(target=lambda: result.append(ask(service, "long")))
        long_one.start()
        deadline = time.monotonic() + 5
        while not any(s.fake.open_streams for s in servers.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        leaving = next(h for h, s in servers.items() if s.fake.open_streams)
        staying = next(h for h in servers if h != leaving)
        for server in servers.values():
            server.fake.default = Script()
        dns.addresses = [staying]  # the pod is being shut down: out of the Service
        time.sleep(REFRESH * 4)
        for i in range(4):
            assert ask(service, f"after{i}").status_code == 200
        assert len(servers[leaving].fake.requests) == 1
        assert len(servers[staying].fake.requests) == 4
        long_one.join(10)
        frames = parse_frames(result[0].text)
        assert content_of(frames) == "".join(f" t{i}" for i in range(8))  # intact
        assert frames[-1].raw == "[DONE]"
        dns.addresses = []  # an empty answer (or a failed look-up) keeps the replicas
        time.sleep(REFRESH * 3)
        assert ask(service, "still").status_code == 200
        assert len(servers[staying].fake.requests) == 5
    finally:
        service.close()


def test_dns_discovery_takes_one_http_url() -> None:
    ok = Settings.load(None, model_server_endpoint="http://vllm:8000", replica_discovery="dns")
    assert ok.replica_discovery == "dns"
    with pytest.raises(SettingsError, match="LLM_REPLICA_DISCOVERY: dns takes one URL"):
        Settings.load(None, model_server_endpoint="http://a:1,http://b:1", replica_discovery="dns")
    with pytest.raises(SettingsError, match="LLM_REPLICA_DISCOVERY: dns takes an http://"):
        Settings.load(None, model_server_endpoint="https://a:1", replica_discovery="dns")
    with pytest.raises(SettingsError, match="LLM_REPLICA_DNS_SERVER"):
        Settings.load(None, replica_dns_server="dns.example")
