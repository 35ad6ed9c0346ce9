"""Where the replicas are and how busy they are, learned while the service runs.

``DnsDiscovery``: the replicas are the addresses one host name resolves to (a Kubernetes
headless Service gives one address per ready pod), looked up again every few seconds;
``ReplicaSet.update`` applies each answer without touching requests in flight. The
system's resolver (``loop.getaddrinfo``) answers, or a given DNS server asked directly
(dnspython), e.g. a cluster's DNS from outside it.

``MetricsPoller``: each replica's Prometheus ``/metrics`` (vLLM's ``num_requests_running``
and ``num_requests_waiting``) tells how many requests it serves for every client, not only
this process; what it reports beyond this process's own requests in flight becomes the
replica's ``external`` load, which the routing policies add to ``in_flight``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
from prometheus_client.parser import text_string_to_metric_families

from llm_service.errors import ServiceError
from llm_service.upstream.failover import Replica, ReplicaSet
from llm_service.upstream.redact import safe_url

log = logging.getLogger(__name__)

# vLLM's gauges of requests being served and queued (one sample per model it serves).
LOAD_METRICS = frozenset({"vllm:num_requests_running", "vllm:num_requests_waiting"})


class Resolver(Protocol):
    """Turns a host name into the IP addresses of the replicas."""

    async def addresses(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The system's resolver, as connections use it (``/etc/hosts``, resolv.conf)."""

    async def addresses(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]


class NameserverResolver:
    """One DNS server asked directly for A and AAAA records (``host`` or ``host:port``,
    ``[v6]:port``)."""

    def __init__(self, server: str, timeout: float = 5.0) -> None:
        address, port = _split_server(server)
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [address]
        self._resolver.port = port
        self._resolver.lifetime = timeout

    async def addresses(self, host: str, port: int) -> list[str]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            found += [record.to_text() for record in answer]
        return found


def _split_server(server: str) -> tuple[str, int]:
    if server.startswith("["):
        address, _, rest = server[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") else 53
    if server.count(":") == 1:
        address, _, port = server.partition(":")
        return address, int(port)
    return server, 53


def replica_urls(url: str, addresses: Iterable[str]) -> list[str]:
    """``url`` once per address, the host replaced by it (sorted: a stable order)."""
    parts = urlsplit(url)
    port = parts.port
    userinfo = parts.netloc.rpartition("@")[0]
    urls = []
    for address in sorted(set(addresses), key=_address_order):
        host = f"[{address}]" if ":" in address else address
        netloc = f"{host}:{port}" if port is not None else host
        if userinfo:
            netloc = f"{userinfo}@{netloc}"
        urls.append(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return urls


def _address_order(address: str) -> tuple[int, int | str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, address)
    return (ip.version, int(ip))


class DnsDiscovery:
    """Keeps ``replica_set`` equal to the addresses of ``url``'s host (see the module
    docstring)."""

    def __init__(
        self, replica_set: ReplicaSet, url: str, resolver: Resolver, refresh: float
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"{safe_url(url)} names no host")
        self.replica_set = replica_set
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.resolver = resolver
        self.refresh = refresh

    async def refresh_once(self) -> None:
        """Look the host up once and apply the answer; a failed or empty look-up keeps the
        replicas as they are."""
        try:
            async with asyncio.timeout(max(self.refresh, 5.0)):
                addresses = await self.resolver.addresses(self.host, self.port)
        except (OSError, TimeoutError, dns.exception.DNSException) as exc:
            log.warning("replica look-up of %s failed: %s", self.host, exc)
            return
        if not addresses:
            log.warning("replica look-up of %s found no address", self.host)
            return
        self.replica_set.update(replica_urls(self.url, addresses))

    async def run(self) -> None:
        """Refresh every ``refresh`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self.refresh_once()
            except Exception:  # a surprise must not end the refreshes for good
                log.exception("replica look-up of %s failed", self.host)


def reported_load(text: str) -> int | None:
    """Requests running plus waiting in a Prometheus text exposition (None without them)."""
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in LOAD_METRICS:
                total = (total or 0.0) + sample.value
    return None if total is None else int(total)


class MetricsPoller:
    """Polls each replica's ``/metrics`` every ``interval`` seconds (see the module
    docstring). ``fetch`` returns the body at a URL or raises a ``ServiceError``."""

    def __init__(
        self,
        replica_set: ReplicaSet,
        interval: float,
        fetch: Callable[[str], Awaitable[bytes]],
    ) -> None:
        self.replica_set = replica_set
        self.interval = interval
        self.fetch = fetch

    async def poll_once(self) -> None:
        replicas = list(self.replica_set.replicas)
        await asyncio.gather(*(self._poll(replica) for replica in replicas))

    async def _poll(self, replica: Replica) -> None:
        try:
            body = await self.fetch(f"{replica.url}/metrics")
            load = reported_load(body.decode("utf-8", "replace"))
        except (ServiceError, ValueError) as exc:
            # Without figures the replica counts by this process's own requests only; its
            # health is the failover's business, not the poller's.
            log.debug("metrics of %s unavailable: %s", safe_url(replica.url), exc)
            load = None
        # The server's count includes this process's requests on it: only the rest is extra.
        replica.external = 0 if load is None else max(0, load - replica.in_flight)

    async def run(self) -> None:
        """Poll every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # a surprise must not end the polls for good
                log.exception("metrics poll failed")
            await asyncio.sleep(self.interval)
