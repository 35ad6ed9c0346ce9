"""A real DNS server on 127.0.0.1 (dnslib, UDP, its own thread) answering A records for one
name from a list the test changes while it runs: what a Kubernetes headless Service's
name looks like to the service as pods come and go, without touching /etc/hosts."""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Resolver(BaseResolver):  # type: ignore[misc]  # dnslib has no type hints
    def __init__(self, name: str) -> None:
        self.name = name.rstrip(".").lower()
        self.addresses: list[str] = []
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        if str(qname).rstrip(".").lower() != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        self.queries += 1
        if request.q.qtype == QTYPE.A:
            for address in list(self.addresses):
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply  # AAAA and others: no answer


class DnsServer:
    """Answers ``name`` with ``addresses`` (change the list at any time)."""

    def __init__(self, name: str) -> None:
        self._resolver = _Resolver(name)
        self._server = DNSServer(
            self._resolver,
            address="127.0.0.1",
            port=0,
            logger=DNSLogger("-request,-reply,-truncated", prefix=False),
        )
        self.port: int = self._server.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._server.start_thread()

    @property
    def addresses(self) -> list[str]:
        return self._resolver.addresses

    @addresses.setter
    def addresses(self, value: list[str]) -> None:
        self._resolver.addresses = list(value)

    @property
    def queries(self) -> int:
        return self._resolver.queries

    def close(self) -> None:
        self._server.stop()
        self._server.server.server_close()
