"""Building the chain: the model step chosen by the settings, the prompt step, both joined.

The HTTP service and a notebook run the same object::

    from llm_service import Settings, build_chain

    chain = build_chain(Settings(model_server_endpoint="http://localhost:8008"))
    chain.invoke({"question": "What is Deep Learning?", "reranked_docs": [...]})
    chain.invoke({"messages": [{"role": "user", "content": "Hi"}]})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel, BaseLLM, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from llm_service.chain.completions_model import CompletionsChatModel
from llm_service.chain.rag_chain import RagChain
from llm_service.chain.upstream_model import UpstreamChatModel
from llm_service.rag import PromptLibrary, PromptStep
from llm_service.settings import Settings
from llm_service.upstream import build_client
from llm_service.upstream.auth import url_credentials
from llm_service.upstream.budget import ServerBudget
from llm_service.upstream.client import UpstreamClient
from llm_service.upstream.params import OPENAI_FIELDS, sampling_payload
from llm_service.upstream.proxy import Proxies
from llm_service.upstream.tls import ssl_context_for

if TYPE_CHECKING:
    import httpx2


def resolve_endpoint(settings: Settings, endpoint: str | None) -> str:
    url = endpoint or settings.model_server_endpoint
    if url is None:
        raise ValueError(
            "no model server: set LLM_MODEL_SERVER_ENDPOINT, pass endpoint=..., or start the "
            "embedded server (llm_service.upstream.embedded.EmbeddedServer)"
        )
    return url


def build_model(
    settings: Settings, *, endpoint: str | None = None, client: UpstreamClient | None = None
) -> BaseChatModel:
    """The model step chosen by ``LLM_MODEL_CLIENT``: the lean client or ``ChatOpenAI``."""
    url = resolve_endpoint(settings, endpoint if client is None else client.base_url)
    if settings.model_api == "completions":
        return CompletionsChatModel(llm=_vllm_openai(settings, url.split(",")[0]))
    if settings.model_client == "chatopenai":
        return _chat_openai(settings, url)
    return UpstreamChatModel(
        client=client or build_client(settings, url),
        model_name=settings.model_name,
        server=settings.model_server,
        max_tokens=settings.default_max_tokens,
    )


@dataclass(frozen=True)
class _OpenAIHttp:
    """What the openai SDK needs to reach a model server as the lean client does."""

    url: str  # without userinfo
    headers: dict[str, str]
    client: httpx2.Client
    async_client: httpx2.AsyncClient


def _openai_http(settings: Settings, url: str) -> _OpenAIHttp:
    """The URL without userinfo, the default headers (the userinfo's ``Authorization:
    Basic`` unless LLM_VLLM_API_KEY is set: the explicit key wins) and the SDK's sync and
    async httpx2 clients (its defaults: timeouts, pool limits).

    Each client's transport is a ``CappedTransport``: the one TLS context (client
    certificate included), the proxy ``Proxies`` chooses, and the size caps of the
    service's own client on every reply. ``trust_env`` is off: httpx2 would read proxies
    from the environment and mount its own, uncapped, transports for them. Redirects are
    not followed, as by the lean client."""
    import httpx2
    import openai

    from llm_service.upstream.capped_transport import AsyncCappedTransport, CappedTransport

    bare, basic = url_credentials(url)
    options: dict[str, Any] = {
        "max_response_bytes": settings.max_upstream_response_bytes,
        "max_line_bytes": settings.max_upstream_line_bytes,
        "verify": ssl_context_for(settings),
        "proxy": Proxies.from_settings(settings).for_url(bare),
        # The SDK's pool sizes; idle connections kept no longer than the lean client keeps
        # them (LLM_UPSTREAM_KEEPALIVE), below the servers' own keep-alive.
        "limits": httpx2.Limits(
            max_connections=openai.DEFAULT_CONNECTION_LIMITS.max_connections,
            max_keepalive_connections=openai.DEFAULT_CONNECTION_LIMITS.max_keepalive_connections,
            keepalive_expiry=settings.upstream_keepalive,
        ),
    }
    return _OpenAIHttp(
        url=bare,
        headers={"Authorization": basic} if basic and settings.vllm_api_key is None else {},
        client=openai.DefaultHttpxClient(
            transport=CappedTransport(**options), trust_env=False, follow_redirects=False
        ),
        async_client=openai.DefaultAsyncHttpxClient(
            transport=AsyncCappedTransport(**options), trust_env=False, follow_redirects=False
        ),
    )


def _chat_openai(settings: Settings, url: str) -> BaseChatModel:
    # Imported on use: the openai SDK and langchain-openai take a second to import, and the
    # default model step needs neither.
    from langchain_openai import ChatOpenAI

    http = _openai_http(settings, url)
    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else "EMPTY"
    return ChatOpenAI(
        model=settings.model_name,
        base_url=f"{http.url}/v1",
        api_key=key,
        default_headers=http.headers or None,
        # langchain-openai sends max_tokens as max_completion_tokens, which llama.cpp and
        # TGI ignore; in extra_body it reaches every server under its OpenAI name.
        extra_body={"max_tokens": settings.default_max_tokens},
        stream_usage=True,
        timeout=settings.request_timeout,
        max_retries=0,
        http_client=http.client,
        http_async_client=http.async_client,
    )


def _vllm_openai(settings: Settings, url: str) -> BaseLLM:
    """langchain-community's ``VLLMOpenAI`` on ``/v1/completions`` (LLM_MODEL_API=completions)."""
    import warnings

    # Imported on use, as in _chat_openai; langchain-community is larger still.
    import openai

    with warnings.catch_warnings():  # "langchain-community is being sunset": known, noted
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.llms import VLLMOpenAI

    http = _openai_http(settings, url)
    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else "EMPTY"
    common: dict[str, Any] = {
        "api_key": key,
        "base_url": f"{http.url}/v1",
        "default_headers": http.headers or None,
        "timeout": openai.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        "max_retries": 0,
    }
    llm: BaseLLM = VLLMOpenAI(
        model_name=settings.model_name,
        openai_api_key=key,
        openai_api_base=f"{http.url}/v1",
        max_tokens=settings.default_max_tokens,
        max_retries=0,
        client=openai.OpenAI(**common, http_client=http.client).completions,
        async_client=openai.AsyncOpenAI(**common, http_client=http.async_client).completions,
    )
    return llm


def chatopenai_kwargs(settings: Settings, params: Mapping[str, Any]) -> dict[str, Any]:
    """Per-request kwargs for ChatOpenAI: OpenAI fields direct, the rest in ``extra_body``."""
    payload = sampling_payload(settings.model_server, params)
    kwargs = {k: payload.pop(k) for k in OPENAI_FIELDS if k in payload and k != "max_tokens"}
    if payload:
        kwargs["extra_body"] = payload  # max_tokens and the server-specific knobs
    return kwargs


def bind_params(
    settings: Settings, model: BaseChatModel, params: Mapping[str, Any]
) -> Runnable[LanguageModelInput, BaseMessage]:
    """``model`` with sampling ``params`` bound, in the form that model takes them."""
    params = {k: v for k, v in params.items() if v is not None}
    if not params:
        return model
    if isinstance(model, UpstreamChatModel | CompletionsChatModel):
        return model.bind(**params)
    return model.bind(**chatopenai_kwargs(settings, params))


def build_chain(
    settings: Settings | None = None,
    *,
    endpoint: str | None = None,
    client: UpstreamClient | None = None,
    prompt: PromptStep | None = None,
    model: BaseChatModel | None = None,
    **params: Any,
) -> Runnable[Mapping[str, Any], BaseMessage]:
    """``prompt | model`` as one Runnable (a ``RagChain``): what the service runs, importable.

    Input: ``{"messages": [...]}`` (ready-made chat messages) or ``{"question": ...,
    "reranked_docs": [...], "history": [...]}`` (the prompt is built from the template
    named by ``LLM_PROMPT_TEMPLATE``, or the input's ``prompt_template``). Output: an
    ``AIMessage``; streamed, ``AIMessageChunk``s whose last carries ``finish_reason`` and
    usage. ``params`` (max_tokens, temperature, top_p, top_k, typical_p,
    repetition_penalty, stop, seed) are bound to the model step.

    Args:
        settings: configuration; ``Settings.load()`` (the environment) when omitted.
        endpoint: model server base URL (no ``/v1``), overriding
            ``settings.model_server_endpoint``.
        client: an ``UpstreamClient`` to share (e.g. the app's connection pool).
        prompt: a ready ``PromptStep`` (default: the templates of ``LLM_PROMPTS_DIR`` with
            the model server's token budget).
        model: a ready chat model (default: ``build_model``, chosen by
            ``LLM_MODEL_CLIENT``).

    The result is an ordinary Runnable: compose it (``retriever | format | chain``), and
    use ``invoke``/``ainvoke``, ``batch``/``abatch``, ``stream``/``astream``,
    ``astream_events``, ``with_retry``, ``with_fallbacks``. Outside the app each event loop
    gets one kept-alive connection pool, closed with the loop. Failures raise
    ``llm_service.errors.ServiceError`` subclasses (``UpstreamError`` 502,
    ``UpstreamUnavailable`` 503, ``UpstreamTimeout`` 504).
    """
    settings = settings or Settings.load()
    if client is None and (prompt is None or model is None):
        client = build_client(settings, resolve_endpoint(settings, endpoint))
    if prompt is None:
        assert client is not None
        prompt = build_prompt_step(settings, client, max_tokens=params.get("max_tokens"))
    model = model or build_model(settings, client=client)
    bound = bind_params(settings, model, params)
    return RagChain(prompt=prompt.as_runnable(), model=bound)


def build_prompt_step(
    settings: Settings, client: UpstreamClient, *, max_tokens: int | None = None
) -> PromptStep:
    """The prompt step: the templates of ``LLM_PROMPTS_DIR``, the server's token budget, and
    ``LLM_MAX_INPUT_CHARS`` as the bound of the built prompt."""
    window = settings.max_model_len or (settings.embedded_n_ctx if settings.embedded else None)
    budget = ServerBudget(
        client,
        settings.model_server,
        settings.model_name,
        max_model_len=window,
        default_max_tokens=max_tokens or settings.default_max_tokens,
    )
    library = PromptLibrary.load(settings.prompts_dir, settings.prompt_template)
    return PromptStep(library, budget, max_chars=settings.max_input_chars)
