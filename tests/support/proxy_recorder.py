"""A proxy.py plugin that logs every request the proxy handles, kept-alive ones included
(proxy.py's own access log has one line per client connection)."""

from __future__ import annotations

import logging

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

log = logging.getLogger(__name__)


class RecordRequests(HttpProxyBasePlugin):
    """Logs ``proxied METHOD host:port/path`` (``proxied CONNECT host:port``) per request."""

    def handle_client_request(self, request: HttpParser) -> HttpParser:
        method = (request.method or b"?").decode("latin-1")
        host = (request.host or b"?").decode("latin-1")
        path = (request.path or b"").decode("latin-1") if not request.is_https_tunnel else ""
        log.info("proxied %s %s:%s%s", method, host, request.port, path)
        return request
