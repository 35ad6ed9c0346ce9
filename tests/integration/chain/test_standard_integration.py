"""LangChain's standard integration tests for ``UpstreamChatModel`` against the embedded
llama.cpp server (SmolLM2-135M-Instruct, ``--chat_format chatml-function-calling``).

The few tests that cannot pass here are marked xfail, each saying what in the tiny model or
in llama-cpp-python's server stops it; the same code paths are checked on the fake server
(tests/integration/chain/test_tools.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from llm_service.chain import UpstreamChatModel
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient
from tests.support.standard import SmolLM2Capabilities

pytestmark = pytest.mark.embedded


class TestUpstreamChatModelLlamaCpp(SmolLM2Capabilities, ChatModelIntegrationTests):
    client: UpstreamClient | None = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, embedded_url: str) -> Iterator[None]:
        # The standard tests build the model from chat_model_params, a property: the
        # client for the session's server is set here, before any test of the class runs.
        cls.client = UpstreamClient(embedded_url)
        yield
        cls.client = None

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return UpstreamChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "client": type(self).client,
            "model_name": "SmolLM2-135M-Instruct",
            "server": ModelServer.LLAMACPP,
            "max_tokens": 128,
            "temperature": 0.0,
        }

    @pytest.mark.xfail(
        reason="llama-cpp-python's server sends no usage in a streamed answer (it has no "
        "stream_options); whole answers carry it (test_usage_metadata passes)",
        strict=True,
    )
    def test_usage_metadata_streaming(self, model: BaseChatModel) -> None:
        super().test_usage_metadata_streaming(model)

    @pytest.mark.xfail(
        reason="llama-cpp-python's server has no tool_choice='required': among two tools "
        "'any' goes as 'auto', and SmolLM2-135M answers 'Hello!' in text, not with a call "
        "(the test's second case, a named tool, is a forced call and works)"
    )
    def test_tool_choice(self, model: BaseChatModel) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(
        reason="json_mode constrains the answer to some JSON object, not to the keys the "
        "prompt asks for: SmolLM2-135M writes other keys (title, description, ...)"
    )
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
