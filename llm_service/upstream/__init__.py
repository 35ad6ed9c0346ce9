"""Everything about talking to model servers: client, auth, parameters, embedded server."""

from __future__ import annotations

from pydantic import SecretStr

from llm_service.settings import Settings
from llm_service.upstream.auth import Auth, OAuthClientCredentials, StaticKeyAuth
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.proxy import Proxies
from llm_service.upstream.redact import Redactor, secrets_of_url
from llm_service.upstream.routing import LeastInflight, make_policy
from llm_service.upstream.sse import Chunk


def build_auth(settings: Settings) -> Auth:
    """Static key if set (it overrides OAuth, as in the seed), else OAuth if configured."""
    if settings.vllm_api_key is not None:
        return StaticKeyAuth(settings.vllm_api_key.get_secret_value())
    if settings.vllm_token_url and settings.vllm_client_id and settings.vllm_client_secret:
        return OAuthClientCredentials(
            settings.vllm_token_url,
            settings.vllm_client_id,
            settings.vllm_client_secret.get_secret_value(),
        )
    return Auth()


def build_redactor(settings: Settings, base_url: str) -> Redactor:
    """A redactor that knows every secret of ``settings`` (each value of a secret setting,
    and each item of a comma-separated one) and the credentials in the URLs."""
    secrets: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            secrets += [raw, *(part.strip() for part in raw.split(","))]
    secrets += secrets_of_url(base_url) + secrets_of_url(settings.vllm_token_url)
    secrets += secrets_of_url(settings.http_proxy) + secrets_of_url(settings.https_proxy)
    return Redactor(secrets)


def build_client(settings: Settings, base_url: str) -> UpstreamClient:
    """The upstream client for ``base_url`` (one URL or several, comma-separated)
    configured from ``settings``."""
    return UpstreamClient(
        base_url,
        auth=build_auth(settings),
        redactor=build_redactor(settings, base_url),
        max_response_bytes=settings.max_upstream_response_bytes,
        max_line_bytes=settings.max_upstream_line_bytes,
        connect_timeout=settings.connect_timeout,
        total_timeout=settings.request_timeout,
        first_token_timeout=settings.first_token_timeout,
        idle_timeout=settings.idle_timeout,
        connections=settings.upstream_connections,
        keepalive=settings.upstream_keepalive,
        tls_skip_verify=settings.tls_skip_verify,
        tls_ca_bundle=settings.tls_ca_bundle,
        tls_client_cert=settings.tls_client_cert,
        tls_client_key=settings.tls_client_key,
        proxies=Proxies.from_settings(settings),
        replica_cooldown=settings.replica_cooldown,
        routing=build_routing(settings),
        replica_discovery=settings.replica_discovery,
        replica_refresh=settings.replica_refresh,
        replica_dns_server=settings.replica_dns_server,
        replica_metrics_interval=settings.replica_metrics_interval,
        transport=settings.upstream_transport,
    )


def build_routing(settings: Settings) -> LeastInflight:
    """The routing policy of LLM_ROUTING with its LLM_ROUTING_* settings."""
    return make_policy(
        settings.routing,
        block_chars=settings.routing_block_chars,
        table_size=settings.routing_table_size,
        balance=settings.routing_balance,
        slack=settings.routing_balance_slack,
        min_match=settings.routing_min_match,
    )


__all__ = [
    "Auth",
    "Chunk",
    "Redactor",
    "UpstreamClient",
    "build_auth",
    "build_client",
    "build_routing",
]
