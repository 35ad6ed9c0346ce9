"""Sampling parameters, mapped to what each kind of model server accepts.

OpenAI's own fields (max_tokens, temperature, top_p, stop, seed) go everywhere. The
seed's extra knobs (top_k, typical_p, repetition_penalty) are sent only to servers that
understand them, under the name each one uses; elsewhere they are dropped with a debug
log rather than failing the request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

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
"""Every sampling parameter a request or a bound chat model may set."""

OPENAI_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed")

# Our name -> the name the server's OpenAI-compatible endpoint accepts.
EXTRA_FIELDS: dict[ModelServer, dict[str, str]] = {
    ModelServer.VLLM: {"top_k": "top_k", "repetition_penalty": "repetition_penalty"},
    ModelServer.RAY: {"top_k": "top_k", "repetition_penalty": "repetition_penalty"},
    ModelServer.LLAMACPP: {
        "top_k": "top_k",
        "typical_p": "typical_p",
        "repetition_penalty": "repeat_penalty",
    },
    ModelServer.TGI: {},
    ModelServer.OPENAI: {},
}


def sampling_payload(server: ModelServer, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request-body fields for ``params`` (None values are left out)."""
    out = {k: params[k] for k in OPENAI_FIELDS if params.get(k) is not None}
    extras = EXTRA_FIELDS[server]
    for name, value in params.items():
        if value is None or name in OPENAI_FIELDS:
            continue
        wire = extras.get(name)
        if wire is None:
            log.debug("%s does not take %s; dropped", server.value, name)
        else:
            out[wire] = value
    return out
