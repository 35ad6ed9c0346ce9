"""LangChain's standard unit tests for ``UpstreamChatModel`` (no model server: nothing
here sends a request)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from llm_service.chain import UpstreamChatModel
from llm_service.settings import ModelServer
from llm_service.upstream.client import UpstreamClient

# Built once: a client opens its connection pools on first use only, and none is used here.
CLIENT = UpstreamClient("http://127.0.0.1:9")


class TestUpstreamChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return UpstreamChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"client": CLIENT, "model_name": "test-model", "server": ModelServer.VLLM}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True  # image parts go to the server as image_url (a vision model reads them)

    @property
    def supports_image_urls(self) -> bool:
        return True
