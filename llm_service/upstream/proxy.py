"""Which proxy, if any, a request to the model server or the token endpoint goes through.

One decision for every path (streams over the lean transport, whole answers and small calls
over aiohttp, the OAuth token endpoint, ChatOpenAI's httpx clients), taken from the proxy
settings (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``, read in ``settings.py`` only) by
``Proxies.for_url``. ``NO_PROXY`` has the meaning curl, requests and Python's
``urllib.request.proxy_bypass_environment`` give it: comma-separated host names, each
covering its subdomains (a leading dot changes nothing, case neither), ``host:port`` (that
port only), IP addresses (IPv6 bracketed or not), ``*`` for every host; and, as curl and Go
do, CIDR ranges (``10.0.0.0/8``) for hosts given by address, which are never matched by
suffix.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from llm_service.errors import UpstreamError
from llm_service.settings import Settings
from llm_service.upstream.faults import ReplicaFailed, ReplicaUnavailable


@dataclass(frozen=True)
class Proxy:
    """A proxy URL taken apart: where to connect, and the ``Proxy-Authorization`` value its
    credentials make (None without credentials)."""

    url: str  # without userinfo
    host: str
    port: int
    authorization: str | None


@dataclass(frozen=True)
class Proxies:
    """The proxy settings; ``Proxies()`` connects directly to everything."""

    http: str | None = None
    https: str | None = None
    no_proxy: str | None = None
    _bypass_cache: dict[str, bool] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> Proxies:
        """The proxies of ``settings``; none at all with ``LLM_UPSTREAM_TRUST_ENV=false``."""
        if not settings.upstream_trust_env:
            return cls()
        return cls(settings.http_proxy, settings.https_proxy, settings.no_proxy)

    def __bool__(self) -> bool:
        return bool(self.http or self.https)

    def for_url(self, url: str) -> str | None:
        """The proxy URL (credentials included) that a request to ``url`` goes through, or
        None to connect directly."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or parts.hostname is None:
            return None
        key = f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
        bypass = self._bypass_cache.get(key)
        if bypass is None:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            bypass = bool(self.no_proxy) and no_proxy_matches(
                self.no_proxy or "", parts.hostname.lower(), port
            )
            self._bypass_cache[key] = bypass
        return None if bypass else proxy

    def proxy_for(self, url: str) -> Proxy | None:
        """``for_url``'s proxy taken apart (see ``Proxy``)."""
        proxy = self.for_url(url)
        return None if proxy is None else parse_proxy(proxy)

    def aiohttp_kwargs(self, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``headers``, ``proxy`` and ``proxy_headers`` for an aiohttp request to ``url``.

        The proxy's credentials go where aiohttp sends them: in ``proxy_headers`` for the
        CONNECT of an https request, among the request's headers for plain http (aiohttp
        adds ``proxy_headers`` to CONNECT only). Never in the proxy URL it may log."""
        kwargs: dict[str, Any] = {"headers": headers}
        proxy = self.proxy_for(url)
        if proxy is None:
            return kwargs
        kwargs["proxy"] = proxy.url
        if proxy.authorization is not None:
            credentials = {"Proxy-Authorization": proxy.authorization}
            if urlsplit(url).scheme == "https":
                kwargs["proxy_headers"] = credentials
            else:
                kwargs["headers"] = {**(headers or {}), **credentials}
        return kwargs


def no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``host`` (lower case, IPv6 without brackets) on ``port`` is one that
    ``no_proxy`` exempts from the proxy."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if address is not None and address in network:
                return True
            continue
        name, entry_port = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            name, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                entry_port = int(rest[1:])
        elif entry.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
            name, _, given = entry.partition(":")
            if not given.isdigit():
                continue
            entry_port = int(given)
        if entry_port is not None and entry_port != port:
            continue
        name = name.lstrip(".")
        if host == name or (address is None and name and host.endswith(f".{name}")):
            return True  # an address is matched whole (or by CIDR): 0.0.1 is no suffix
    return False


@lru_cache(maxsize=64)
def parse_proxy(url: str) -> Proxy:
    """A proxy URL (``http://user:pass@host:port``) taken apart; port 80 when none."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 80
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    shown = f"[{host}]" if ":" in host else host
    return Proxy(f"{parts.scheme}://{shown}:{port}", host, port, authorization)


def unreachable(reason: str) -> ReplicaUnavailable:
    """The proxy could not be reached (refused, DNS, timed out): 503, and nothing was tried
    without it."""
    return ReplicaUnavailable(f"proxy unreachable ({reason}); the model server was not reached")


def failed(reason: str) -> ReplicaFailed:
    """The proxy broke the protocol (its answer to CONNECT is not HTTP, ...): 502."""
    return ReplicaFailed(f"proxy failed ({reason}); the model server was not reached")


def refused(status: int) -> UpstreamError:
    """The proxy answered a CONNECT with ``status`` instead of opening the tunnel: a 407
    means its credentials (in HTTPS_PROXY) are missing or wrong, a 5xx that it could not
    reach the model server."""
    if status == 407:
        return UpstreamError(
            "proxy refused the request: 407 Proxy Authentication Required (check the "
            "credentials in HTTPS_PROXY / HTTP_PROXY)"
        )
    if status >= 500:
        return ReplicaUnavailable(
            f"proxy could not reach the model server (it answered CONNECT with {status})"
        )
    return UpstreamError(f"proxy refused to connect to the model server ({status})")
