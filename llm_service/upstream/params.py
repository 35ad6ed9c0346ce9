"""The capability table: which request field each kind of model server takes, and how.

Every field of a chat request that is meant for the model server is looked up here for the
configured kind of server (``LLM_MODEL_SERVER``). A field is *passed* under its name,
*translated* (another name, another shape), or *refused*: the request gets a 422 naming the
field and the server, e.g. ``logit_bias: not supported by tgi model servers
(LLM_MODEL_SERVER=tgi)``. Nothing is dropped silently. A value that asks for nothing (``n``
1, ``logprobs`` false...) is left out where a server lacks the field, not refused.

Messages go through the same table (``wire_messages``): the ``developer`` role becomes
``system`` where a server has no such role, text-only content lists become one string
where a server's templates need a string, and content parts a server cannot take are
refused. ``docs/capabilities.md`` is this table in prose, with the test behind each cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llm_service.errors import InvalidRequest
from llm_service.protocol.openai import TEXT_PARTS, content_text
from llm_service.settings import ModelServer

log = logging.getLogger(__name__)

SAMPLING_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "typical_p",
    "repetition_penalty",
    "stop",
    "seed",
)
"""The seed's sampling parameters: what a bound chat model or LangServe's knobs may set."""

OPENAI_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed")
"""The sampling fields every server takes under OpenAI's names."""

# OpenAI's chat-completions request fields meant for the model server (the service itself
# answers to messages, model, stream and stream_options).
OPENAI_REQUEST = (
    *OPENAI_FIELDS,
    "max_completion_tokens",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    "reasoning_effort",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "metadata",
    "store",
    "service_tier",
    "prediction",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "verbosity",
    "web_search_options",
    "moderation",
)

SEED_KNOBS = ("top_k", "typical_p", "repetition_penalty")
"""The seed's (OPEA LLMParamsDoc's) sampling knobs outside OpenAI's API."""

VLLM_EXTRAS = frozenset({
    # sampling parameters (vLLM's SamplingParams through its chat request)
    "use_beam_search", "best_of", "min_p", "length_penalty", "stop_token_ids",
    "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "truncation_side",
    "prompt_logprobs", "logprob_token_ids", "allowed_token_ids", "bad_words", "watermarking",
    "thinking_token_budget", "include_reasoning", "repetition_detection",
    # chat template and multimodal processing
    "echo", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "documents", "chat_template", "chat_template_kwargs", "media_io_kwargs",
    "mm_processor_kwargs",
    # structured output: the guided_* fields of vLLM before 0.12, structured_outputs after
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structural_tag",
    "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs",
    # scheduling, tracing and the rest of vLLM's extra parameters
    "priority", "request_id", "session_id", "logits_processors", "return_tokens_as_token_ids",
    "return_token_ids", "return_prompt_text", "cache_salt", "kv_transfer_params",
    "ec_transfer_params", "vllm_xargs", "stream_interval",
})  # fmt: skip
"""vLLM's own chat-request fields (``vllm/entrypoints/openai/protocol.py``,
``ChatCompletionRequest``, the releases of 2025 and 2026): passed as they are to vLLM and Ray
Serve LLM (vLLM underneath), refused elsewhere."""

FIELDS: frozenset[str] = frozenset({*OPENAI_REQUEST, *SEED_KNOBS, *VLLM_EXTRAS})
"""Every request field this table knows: what may reach a model server."""

# Values that ask for nothing: where a server lacks the field they are left out, not refused
# (pipelines send whole parameter objects with their defaults filled in).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "parallel_tool_calls": (True,),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "modalities": (["text"],),
    "metadata": ({},),
    "store": (False,),
    "service_tier": ("auto", "default"),
    "top_k": (-1,),
    "typical_p": (1, 1.0),
    "repetition_penalty": (1, 1.0),
    "documents": ([],),
    "chat_template_kwargs": ({},),
    "mm_processor_kwargs": ({},),
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "add_special_tokens": (False,),
    "echo": (False,),
    "priority": (0,),
    "min_tokens": (0,),
    "min_p": (0, 0.0),
    "ignore_eos": (False,),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "include_stop_str_in_output": (False,),
    "length_penalty": (1, 1.0),
    "stop_token_ids": ([],),
    "bad_words": ([],),
    "use_beam_search": (False,),
    "include_reasoning": (True,),
}


def is_neutral(name: str, value: Any) -> bool:
    """True when ``value`` asks for nothing (the field's default in OpenAI's or vLLM's API)."""
    return any(type(value) is type(v) and value == v for v in NEUTRAL.get(name, ()))


class Refused(ValueError):
    """A value a server cannot take in any form (a translation's answer)."""


@dataclass(frozen=True)
class Translation:
    """A field sent in another shape: ``make`` turns the value into the fields to send."""

    make: Callable[[Any], dict[str, Any]]
    how: str  # for the docs: what becomes of the field


Way = str | Translation
"""How a server takes a field: under a name, or translated."""


def _schema_of(fmt: Mapping[str, Any]) -> Any:
    """The JSON schema of a response_format (OpenAI's json_schema, or llama.cpp's schema)."""
    inner = fmt.get("json_schema")
    if isinstance(inner, Mapping) and inner.get("schema") is not None:
        return inner["schema"]
    return fmt.get("schema")


def _tgi_response_format(fmt: Mapping[str, Any]) -> dict[str, Any]:
    # TGI's grammar: {"type": "json", "value": <schema>} (every release with the Messages
    # API reads this form; the json_schema form came later).
    kind = fmt.get("type")
    if kind == "text":
        return {}  # free text is what TGI writes without a grammar
    if kind in ("json_object", "json_schema"):
        schema = _schema_of(fmt)
        return {"response_format": {"type": "json", "value": schema or {"type": "object"}}}
    raise Refused(f"type {kind!r}")


def _llamacpp_response_format(fmt: Mapping[str, Any]) -> dict[str, Any]:
    # llama.cpp's server refuses type json_schema; it takes a schema with type json_object.
    kind = fmt.get("type")
    if kind == "text":
        return {"response_format": {"type": "text"}}
    if kind in ("json_object", "json_schema"):
        schema = _schema_of(fmt)
        out: dict[str, Any] = {"type": "json_object"}
        if schema is not None:
            out["schema"] = schema
        return {"response_format": out}
    raise Refused(f"type {kind!r}")


def _same(names: Iterable[str]) -> dict[str, Way]:
    return {name: name for name in names}


# Taken by every kind of server, under OpenAI's name.
_COMMON = _same((*OPENAI_FIELDS, "frequency_penalty", "presence_penalty", "logprobs",
                 "top_logprobs", "tools", "tool_choice"))  # fmt: skip

_VLLM: dict[str, Way] = {
    **_COMMON,
    **_same(("max_completion_tokens", "n", "logit_bias", "parallel_tool_calls",
             "response_format", "user", "reasoning_effort", "top_k", "repetition_penalty")),
    **_same(VLLM_EXTRAS),
}  # fmt: skip

CAPABILITIES: dict[ModelServer, dict[str, Way]] = {
    ModelServer.VLLM: _VLLM,
    ModelServer.RAY: _VLLM,  # Ray Serve LLM's OpenAI app takes vLLM's request
    ModelServer.TGI: {
        **_COMMON,
        "max_completion_tokens": "max_tokens",
        "response_format": Translation(
            _tgi_response_format,
            "json_schema / json_object as TGI's grammar {type: json, value: schema}; "
            "text left out (TGI's default)",
        ),
    },
    ModelServer.LLAMACPP: {
        **_COMMON,
        **_same(
            (
                "logit_bias",
                "user",
                "functions",
                "function_call",
                "top_k",
                "typical_p",
                "min_p",
                "min_tokens",
            )
        ),
        "max_completion_tokens": "max_tokens",
        "repetition_penalty": "repeat_penalty",
        "response_format": Translation(
            _llamacpp_response_format,
            "json_schema as {type: json_object, schema}; json_object and text as they are",
        ),
    },
    ModelServer.OPENAI: _same(OPENAI_REQUEST),
}
"""Per kind of server: our field name -> how the server takes it. Absent: refused."""


@dataclass(frozen=True)
class MessageRules:
    """How a server takes messages."""

    developer: bool  # has the developer role (else: sent as system)
    function: bool  # takes the legacy function role
    parts: frozenset[str]  # content parts it takes in a list
    strings: bool  # its templates need text content as one string
    null_content: bool  # takes an assistant message whose content is null (else: "")


_VLLM_MESSAGES = MessageRules(
    developer=False,
    function=True,
    parts=frozenset({"text", "refusal", "image_url", "input_audio", "audio_url", "video_url"}),
    strings=False,
    null_content=True,
)
MESSAGES: dict[ModelServer, MessageRules] = {
    ModelServer.VLLM: _VLLM_MESSAGES,
    ModelServer.RAY: _VLLM_MESSAGES,
    ModelServer.TGI: MessageRules(
        developer=False, function=False, parts=frozenset({"text", "image_url"}),
        strings=False, null_content=True,
    ),
    # llama.cpp's chat templates print the content as it is: a list would be its repr.
    ModelServer.LLAMACPP: MessageRules(
        developer=False, function=True, parts=frozenset({"text", "image_url"}),
        strings=True, null_content=False,
    ),
    ModelServer.OPENAI: MessageRules(
        developer=True, function=True,
        parts=frozenset({"text", "refusal", "image_url", "input_audio", "file"}),
        strings=False, null_content=True,
    ),
}  # fmt: skip


def unsupported(server: ModelServer) -> str:
    """The reason in a refusal: ``not supported by tgi model servers (LLM_MODEL_SERVER=tgi)``."""
    return f"not supported by {server.value} model servers (LLM_MODEL_SERVER={server.value})"


def _refuse(problems: list[tuple[str, str]]) -> InvalidRequest:
    message = "; ".join(f"{param}: {reason}" for param, reason in problems)
    return InvalidRequest(message, param=problems[0][0])


def sampling_payload(server: ModelServer, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request-body fields for ``params`` (our names -> values; None is left out), under
    the names ``server`` takes. Raises ``InvalidRequest`` (422) naming every field the server
    cannot take."""
    ways = CAPABILITIES[server]
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    # Both limits may come (a model's default max_tokens, the request's
    # max_completion_tokens): the request's wins, as in vLLM, whatever name it goes under.
    skip = "max_tokens" if params.get("max_completion_tokens") is not None else None
    for name, value in params.items():
        if value is None or name == skip:
            continue
        way = ways.get(name)
        if way is None:
            if name in SEED_KNOBS:
                # The OPEA LLMParamsDoc's knobs: pipelines send them with every request (its
                # defaults included), and the service this replaces accepted them and sent
                # them nowhere. Refusing them would break those pipelines; they reach every
                # server that takes them, and the rest leave them out as the seed did.
                log.debug("%s is not taken by %s model servers: left out", name, server.value)
            elif not is_neutral(name, value):
                problems.append((name, unsupported(server)))
        elif isinstance(way, str):
            out[way] = value
        else:
            try:
                out.update(way.make(value))
            except Refused as exc:
                problems.append((name, f"{exc}: {unsupported(server)}"))
    if problems:
        raise _refuse(problems)
    for when, field, value in _COMPANIONS.get(server, ()):
        if out.get(when) and field not in out:
            out[field] = value
    return out


# Fields a server needs alongside another to do what OpenAI's API does with that one alone:
# (when this wire field is set, this field, this value, unless given).
_COMPANIONS: dict[ModelServer, tuple[tuple[str, str, Any], ...]] = {
    # llama.cpp's server returns no logprobs for logprobs: true without top_logprobs.
    ModelServer.LLAMACPP: (("logprobs", "top_logprobs", 0),),
}


def wire_messages(server: ModelServer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as ``server`` takes them (see ``MessageRules``); the same list when
    nothing changes. Raises ``InvalidRequest`` naming each message part it cannot take."""
    rules = MESSAGES[server]
    out: list[dict[str, Any]] | None = None
    problems: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        new = message
        role = message.get("role")
        if role == "developer" and not rules.developer:
            new = {**new, "role": "system"}
        elif role == "function" and not rules.function:
            problems.append((f"messages.{i}.role", f"function messages: {unsupported(server)}"))
        content = message.get("content")
        if isinstance(content, list):
            kinds = {part.get("type") for part in content}
            if kinds <= TEXT_PARTS:
                if rules.strings or not kinds <= rules.parts:
                    new = {**new, "content": content_text(content)}
            else:
                for j, part in enumerate(content):
                    if part.get("type") not in rules.parts:
                        reason = f"{part.get('type')} parts: {unsupported(server)}"
                        problems.append((f"messages.{i}.content.{j}", reason))
        elif content is None and not rules.null_content:
            new = {**new, "content": ""}
        if new is not message:
            if out is None:
                out = list(messages[:i])
            out.append(new)
        elif out is not None:
            out.append(message)
    if problems:
        raise _refuse(problems)
    return messages if out is None else out
