"""What the embedded SmolLM2 llama.cpp server can do, for langchain-tests' standard suites.

The suites that run against it (the service's own chat model, and ChatOpenAI directly and
through the service) declare the same capabilities: the server's, whichever client asks.
"""

from __future__ import annotations


class SmolLM2Capabilities:
    """The standard suites' capability flags for SmolLM2-135M behind llama-cpp-python's
    server (``--chat_format chatml-function-calling``). Mix in before the suite's class."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True  # a tool named in tool_choice is a grammar-forced call

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # SmolLM2 reads text only

    @property
    def supports_image_urls(self) -> bool:
        return False  # likewise

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True
